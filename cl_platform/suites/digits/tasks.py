"""The digits benchmark: a seeded image split, five continual-learning tasks and two generation streams.

Split of scikit-learn's 1,797 digits (stratified per digit, seeded; sizes per digit / total):

==================  ============  ======  ====================================================
pool                per digit     total   used for
==================  ============  ======  ====================================================
task eval x 5       8 each        400     eval rows of each task (80 images per task)
holdout             15            150     model-card eval (pre-training questions), judge
                                          held-out accuracy, reference images of the probe
pretrain            the rest      1,247   pre-training (understanding + generation), judge
                                          training, the ``kd`` stream, and every task's train
                                          rows (1,000 images per task, seeded per task)
==================  ============  ======  ====================================================

Decision: every task trains on images of the pre-training pool (the base model has seen those
images when learning to name and draw digits; the tasks teach new *skills*, not new images), and
the tasks share that pool. Measured: a LoRA trained on 200 images reached 0.81-0.87 on ``name``,
on 1,000 images 0.90; pools disjoint between tasks would leave 200 each. The task eval pools and
the holdout pool are held out from everything: pre-training, every task's train rows, the judge's
training set and the ``kd`` stream, and the five eval pools are mutually disjoint.

Tasks (in :data:`TASK_ORDER`), each a new instruction with its own answer vocabulary, disjoint from
the other tasks' and from pre-training's (English digit words):

- ``parity``:  "is this digit even or odd ?"                          -> even | odd
- ``plus_k``:  "what is this digit plus three ?" (k = :data:`PLUS_K`)  -> numerals 3..12
- ``compare``: "is this digit greater than four ?" (k = :data:`COMPARE_K`) -> yes | no
- ``name``:    "what is the spanish name of this digit ?"              -> cero .. nueve
- ``pair``:    two images of the same digit, "what digit is in both images in german ?" -> null .. neun

Decision: ``k`` is fixed per task. With ``k`` drawn per row (1..9 / 0..8) a task is a table over
(digit, k) that 400 rows did not cover: plain LoRA from the base reached 0.21 (``plus_k``) and 0.85
(``compare``, LoRA on every linear layer, 750 steps) on the eval split. Comparing two images
("which is larger ?") stayed at chance (0.33) for the same reason. Each task is now one
instruction whose answer is a function of the image(s), learnable by a LoRA on the MLPs alone
(upper bounds: ``benchmarks/digits_upper_bound.py``), and every task rewrites how the same digit
features are read out, so learning one interferes with the others. ``pair`` shows two different
images of one digit: the tiny base reads a digit among two images less reliably (0.75-0.83 on
held-out pairs, against 0.93 alone), and a question on one of two images of different digits
stayed at 0.70.

Rows: each task has 1,000 train rows (1,000 distinct images of the pool in a seeded order; for
``pair`` each with a partner image of the same digit, in random order) and 80 eval rows (one per
eval image; for ``pair`` its partner is another image of the same digit from the same eval pool).

Streams (rows ``tokens`` = ``<s> draw a <word> <sep> <boi> 64 codes <eoi> </s>``, ``label``,
``prompt_len``): ``kd`` = 500 images of the pretrain pool (50 per digit), ``probe`` = 10 prompts per
digit (100 rows) whose image part is a held-out real digit of that label (a reference; only the
prompt ``tokens[:prompt_len]`` is fed to the model).

Everything is a pure function of ``seed``: each component draws from its own generator seeded with
``(seed, component name)``, so adding a component never shifts the others.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa

from cl_platform.models.modality import ModalitySpec
from cl_platform.suites.digits import vocab as V

# --------------------------------------------------------------------------------------------
# Sizes and schemas
# --------------------------------------------------------------------------------------------

TASK_ORDER: tuple[str, ...] = ("parity", "plus_k", "compare", "name", "pair")
#: The k of ``plus_k`` ("what is this digit plus three ?").
PLUS_K = 3
#: The k of ``compare`` ("is this digit greater than four ?": yes for 5..9, no for 0..4).
COMPARE_K = 4
EVAL_PER_DIGIT_PER_TASK = 8
HOLDOUT_PER_DIGIT = 15
TRAIN_ROWS_PER_TASK = 1000
KD_PER_DIGIT = 50
PROBE_PER_DIGIT = 10

TRAIN_SCHEMA = pa.schema([("tokens", pa.list_(pa.int32())), ("answer_start", pa.int32())])
EVAL_SCHEMA = pa.schema([("prompt_tokens", pa.list_(pa.int32())), ("answer_tokens", pa.list_(pa.int32())), ("answer", pa.string())])
STREAM_SCHEMA = pa.schema([("tokens", pa.list_(pa.int32())), ("label", pa.int32()), ("prompt_len", pa.int32())])
#: Pre-training rows: the train format plus the digit label (for the model card).
PRETRAIN_SCHEMA = pa.schema([("tokens", pa.list_(pa.int32())), ("answer_start", pa.int32()), ("label", pa.int32())])


@functools.lru_cache(maxsize=1)
def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 scikit-learn digits: ``(images [1797, 8, 8] int64 levels 0..16, labels [1797] int64)``.

    Read-only arrays (cached; copy before modifying).
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.rint(d.images).astype(np.int64)
    labels = d.target.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _rng(seed: int, component: str) -> np.random.Generator:
    """A generator for one component, independent of every other component's draws."""
    return np.random.default_rng([int(seed), zlib.crc32(component.encode())])


# --------------------------------------------------------------------------------------------
# The split
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DigitsSplit:
    """Indices into :func:`load_digit_images` (sorted int64 arrays).

    Attributes:
        pretrain: images for pre-training, the judge's training set, the ``kd`` stream and the
            tasks' train rows.
        holdout: held out from everything; model-card eval, judge accuracy, probe references.
        task_train: per task, its train pool (the ``pretrain`` pool, shared by the tasks).
        task_eval: per task, its eval pool (disjoint from everything else).
    """

    pretrain: np.ndarray
    holdout: np.ndarray
    task_train: dict[str, np.ndarray]
    task_eval: dict[str, np.ndarray]

    def sizes(self) -> dict:
        return {
            "pretrain": int(self.pretrain.size),
            "holdout": int(self.holdout.size),
            "task_train": {k: int(v.size) for k, v in self.task_train.items()},
            "task_eval": {k: int(v.size) for k, v in self.task_eval.items()},
        }

    def to_dict(self) -> dict:
        """Plain lists, for ``suite.json``."""
        return {
            "pretrain": self.pretrain.tolist(),
            "holdout": self.holdout.tolist(),
            "task_train": {k: v.tolist() for k, v in self.task_train.items()},
            "task_eval": {k: v.tolist() for k, v in self.task_eval.items()},
        }


def make_split(seed: int = 0, tasks: tuple[str, ...] = TASK_ORDER) -> DigitsSplit:
    """The seeded, per-digit stratified split described in the module docstring."""
    _, labels = load_digit_images()
    rng = _rng(seed, "split")
    eval_parts: dict[str, list[np.ndarray]] = {t: [] for t in tasks}
    holdout, pretrain = [], []
    n_eval = EVAL_PER_DIGIT_PER_TASK
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        need = len(tasks) * n_eval + HOLDOUT_PER_DIGIT + TRAIN_ROWS_PER_TASK // 10
        if idx.size < need:
            raise ValueError(f"make_split: digit {digit} has {idx.size} images, the split needs {need}")
        pos = 0
        for t in tasks:
            eval_parts[t].append(idx[pos : pos + n_eval])
            pos += n_eval
        holdout.append(idx[pos : pos + HOLDOUT_PER_DIGIT])
        pos += HOLDOUT_PER_DIGIT
        pretrain.append(idx[pos:])
    cat = lambda parts: np.sort(np.concatenate(parts)).astype(np.int64)  # noqa: E731
    pool = cat(pretrain)
    return DigitsSplit(
        pretrain=pool,
        holdout=cat(holdout),
        task_train={t: pool for t in tasks},
        task_eval={t: cat(p) for t, p in eval_parts.items()},
    )


# --------------------------------------------------------------------------------------------
# Task definitions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One question about one or two images, before tokenisation.

    Attributes:
        images: dataset indices of the images in the prompt, in order.
        question: the question text.
        answer: the answer text (one word).
        param: the task parameter (k of ``plus_k`` / ``compare``), -1 when the task has none.
    """

    images: tuple[int, ...]
    question: str
    answer: str
    param: int = -1


def _parity(i: int, labels: np.ndarray, rng: np.random.Generator, pool: np.ndarray) -> Item:
    d = int(labels[i])
    return Item((i,), "is this digit even or odd ?", "even" if d % 2 == 0 else "odd")


def _plus_k(i: int, labels: np.ndarray, rng: np.random.Generator, pool: np.ndarray) -> Item:
    d = int(labels[i])
    return Item((i,), f"what is this digit plus {V.DIGIT_WORDS[PLUS_K]} ?", str(d + PLUS_K), PLUS_K)


def _compare(i: int, labels: np.ndarray, rng: np.random.Generator, pool: np.ndarray) -> Item:
    d = int(labels[i])
    return Item((i,), f"is this digit greater than {V.DIGIT_WORDS[COMPARE_K]} ?", "yes" if d > COMPARE_K else "no", COMPARE_K)


def _name(i: int, labels: np.ndarray, rng: np.random.Generator, pool: np.ndarray) -> Item:
    return Item((i,), "what is the spanish name of this digit ?", V.SPANISH_DIGIT_WORDS[int(labels[i])])


PAIR_QUESTION = "what digit is in both images in german ?"


def _pair(i: int, labels: np.ndarray, rng: np.random.Generator, pool: np.ndarray) -> Item:
    """Image ``i`` and another image of the same digit from ``pool``, in random order."""
    d = int(labels[i])
    partners = pool[(labels[pool] == d) & (pool != i)]
    if not partners.size:
        raise ValueError(f"pair task: pool of {pool.size} images has no other image of digit {d} for image {i}")
    j = int(rng.choice(partners))
    images = (i, j) if rng.integers(2) else (j, i)
    return Item(images, PAIR_QUESTION, V.GERMAN_DIGIT_WORDS[d])


@dataclass(frozen=True)
class TaskDef:
    """A task of the suite.

    Attributes:
        name: task name (store-safe).
        description: one line for reports.
        answer_vocab: every answer the task can have (its own; disjoint from the other tasks').
        make_item: ``(image index, labels, rng, pool) -> Item``.
    """

    name: str
    description: str
    answer_vocab: tuple[str, ...]
    make_item: Callable[[int, np.ndarray, np.random.Generator, np.ndarray], Item]


TASK_DEFS: dict[str, TaskDef] = {
    "parity": TaskDef("parity", "is the digit even or odd", ("even", "odd"), _parity),
    "plus_k": TaskDef("plus_k", f"the digit plus {PLUS_K}, answered as a numeral", tuple(str(n + PLUS_K) for n in range(10)), _plus_k),
    "compare": TaskDef("compare", f"is the digit greater than {COMPARE_K}", ("yes", "no"), _compare),
    "name": TaskDef("name", "the Spanish name of the digit", V.SPANISH_DIGIT_WORDS, _name),
    "pair": TaskDef("pair", "two images of one digit, named in German", V.GERMAN_DIGIT_WORDS, _pair),
}


# --------------------------------------------------------------------------------------------
# Building tables
# --------------------------------------------------------------------------------------------


def _prompt(item: Item, images: np.ndarray) -> list[int]:
    return V.understanding_prompt(images[list(item.images)], item.question)


def items_to_train_table(items: list[Item], images: np.ndarray) -> pa.Table:
    """Train rows ``tokens = prompt + answer + </s>``, ``answer_start = len(prompt)``."""
    tokens, starts = [], []
    for it in items:
        toks, start = V.make_example(_prompt(it, images), V.answer_tokens(it.answer))
        tokens.append(toks)
        starts.append(start)
    return pa.table({"tokens": pa.array(tokens, pa.list_(pa.int32())), "answer_start": pa.array(starts, pa.int32())}, schema=TRAIN_SCHEMA)


def items_to_eval_table(items: list[Item], images: np.ndarray) -> pa.Table:
    """Eval rows: ``prompt_tokens`` (ends with ``<sep>``), ``answer_tokens`` (answer + ``</s>``), ``answer``."""
    prompts = [_prompt(it, images) for it in items]
    answers = [V.answer_tokens(it.answer) for it in items]
    return pa.table(
        {
            "prompt_tokens": pa.array(prompts, pa.list_(pa.int32())),
            "answer_tokens": pa.array(answers, pa.list_(pa.int32())),
            "answer": pa.array([it.answer for it in items], pa.string()),
        },
        schema=EVAL_SCHEMA,
    )


@dataclass
class DigitsTask:
    """One task of the suite, ready to write to a store.

    Attributes:
        name: task name.
        description: one line.
        answer_vocab: the task's possible answers.
        train: train table (``TRAIN_SCHEMA``).
        eval: eval table (``EVAL_SCHEMA``).
        train_items: the untokenised rows of ``train`` (image indices, question, answer, param).
        eval_items: the untokenised rows of ``eval``.
    """

    name: str
    description: str
    answer_vocab: tuple[str, ...]
    train: pa.Table
    eval: pa.Table
    train_items: list[Item] = field(repr=False)
    eval_items: list[Item] = field(repr=False)


def build_task(name: str, split: DigitsSplit, seed: int = 0, *, train_rows: int = TRAIN_ROWS_PER_TASK) -> DigitsTask:
    """Build task ``name`` from its train and eval pools of ``split``."""
    if name not in TASK_DEFS:
        raise ValueError(f"build_task(name={name!r}): unknown digits task; known: {list(TASK_DEFS)}")
    tdef = TASK_DEFS[name]
    images, labels = load_digit_images()
    train_pool, eval_pool = split.task_train[name], split.task_eval[name]
    rng = _rng(seed, f"task/{name}/train")
    order = np.concatenate([rng.permutation(train_pool) for _ in range(-(-train_rows // train_pool.size))])[:train_rows]
    train_items = [tdef.make_item(int(i), labels, rng, train_pool) for i in order]
    rng = _rng(seed, f"task/{name}/eval")
    eval_items = [tdef.make_item(int(i), labels, rng, eval_pool) for i in rng.permutation(eval_pool)]
    return DigitsTask(
        name=name,
        description=tdef.description,
        answer_vocab=tdef.answer_vocab,
        train=items_to_train_table(train_items, images),
        eval=items_to_eval_table(eval_items, images),
        train_items=train_items,
        eval_items=eval_items,
    )


def _stratified(indices: np.ndarray, per_digit: int, rng: np.random.Generator, what: str) -> np.ndarray:
    """``per_digit`` indices of each digit from ``indices`` (random, then ordered digit-major)."""
    _, labels = load_digit_images()
    out = []
    for d in range(10):
        cand = indices[labels[indices] == d]
        if cand.size < per_digit:
            raise ValueError(f"{what}: needs {per_digit} images of digit {d}, pool has {cand.size}")
        out.append(rng.choice(cand, size=per_digit, replace=False))
    return np.concatenate(out).astype(np.int64)


def generation_stream(indices: np.ndarray) -> pa.Table:
    """Stream rows for the given images: ``tokens`` = generation prompt + image + ``</s>``, ``label``, ``prompt_len``."""
    images, labels = load_digit_images()
    tokens, labs, plens = [], [], []
    for i in indices:
        d = int(labels[i])
        toks, plen = V.generation_example(d, images[i])
        tokens.append(toks)
        labs.append(d)
        plens.append(plen)
    return pa.table(
        {"tokens": pa.array(tokens, pa.list_(pa.int32())), "label": pa.array(labs, pa.int32()), "prompt_len": pa.array(plens, pa.int32())},
        schema=STREAM_SCHEMA,
    )


def kd_stream(split: DigitsSplit, seed: int = 0, *, per_digit: int = KD_PER_DIGIT) -> pa.Table:
    """The ``kd`` stream: ``per_digit`` pretrain-pool images of each digit, shuffled."""
    rng = _rng(seed, "stream/kd")
    idx = _stratified(split.pretrain, per_digit, rng, "kd_stream")
    return generation_stream(rng.permutation(idx))


def probe_stream(split: DigitsSplit, seed: int = 0, *, per_digit: int = PROBE_PER_DIGIT) -> pa.Table:
    """The generation probe: ``per_digit`` prompts per digit (digit-major order), holdout reference images."""
    rng = _rng(seed, "stream/probe")
    return generation_stream(_stratified(split.holdout, per_digit, rng, "probe_stream"))


# --------------------------------------------------------------------------------------------
# Pre-training sets (for the model engineer) and the model-card eval
# --------------------------------------------------------------------------------------------


def _pretrain_table(tokens: list[list[int]], starts: list[int], labs: list[int]) -> pa.Table:
    return pa.table(
        {"tokens": pa.array(tokens, pa.list_(pa.int32())), "answer_start": pa.array(starts, pa.int32()), "label": pa.array(labs, pa.int32())},
        schema=PRETRAIN_SCHEMA,
    )


def pretrain_examples(seed: int = 0) -> tuple[pa.Table, pa.Table]:
    """Pre-training rows from the pretrain pool only: ``(understanding, generation)`` tables.

    Both have ``PRETRAIN_SCHEMA`` (``tokens``, ``answer_start``, ``label``), one row per pretrain-pool
    image (1,247 each), in a seeded order:

    - understanding: ``<s> <boi> img <eoi> what digit is this ? <sep> seven </s>``
    - generation:    ``<s> draw a seven <sep> <boi> img <eoi> </s>``
    """
    split = make_split(seed)
    images, labels = load_digit_images()
    u_tok, u_start, u_lab = [], [], []
    for i in _rng(seed, "pretrain/understanding").permutation(split.pretrain):
        d = int(labels[i])
        toks, start = V.understanding_example(images[i], V.PRETRAIN_QUESTION, V.DIGIT_WORDS[d])
        u_tok.append(toks), u_start.append(start), u_lab.append(d)
    g_tok, g_start, g_lab = [], [], []
    for i in _rng(seed, "pretrain/generation").permutation(split.pretrain):
        d = int(labels[i])
        toks, start = V.generation_example(d, images[i])
        g_tok.append(toks), g_start.append(start), g_lab.append(d)
    return _pretrain_table(u_tok, u_start, u_lab), _pretrain_table(g_tok, g_start, g_lab)


@dataclass
class PretrainEval:
    """Held-out items for the base model's card (never seen in pre-training or any task).

    Attributes:
        understanding: eval rows (``EVAL_SCHEMA``) "what digit is this ?" on the 150 holdout images.
        understanding_labels: the digit of each understanding row.
        generation: the probe stream (``STREAM_SCHEMA``): prompt ``tokens[:prompt_len]`` and ``label``.
    """

    understanding: pa.Table
    understanding_labels: np.ndarray
    generation: pa.Table


def pretrain_eval(seed: int = 0) -> PretrainEval:
    """The model-card eval items (holdout pool only)."""
    split = make_split(seed)
    images, labels = load_digit_images()
    items = [Item((int(i),), V.PRETRAIN_QUESTION, V.DIGIT_WORDS[int(labels[i])]) for i in split.holdout]
    return PretrainEval(
        understanding=items_to_eval_table(items, images),
        understanding_labels=labels[split.holdout].copy(),
        generation=probe_stream(split, seed),
    )


# --------------------------------------------------------------------------------------------
# The suite
# --------------------------------------------------------------------------------------------


@dataclass
class DigitsSuite:
    """The whole digits benchmark for one seed.

    Attributes:
        seed: the seed everything was drawn with.
        spec: the modality spec (``digits-v1``).
        split: the image split.
        task_order: the default continual-learning order.
        tasks: name -> task, in ``task_order``.
        streams: ``{"kd": ..., "probe": ...}`` (``STREAM_SCHEMA``).
    """

    seed: int
    spec: ModalitySpec
    split: DigitsSplit
    task_order: tuple[str, ...]
    tasks: dict[str, DigitsTask]
    streams: dict[str, pa.Table]

    def sizes(self) -> dict:
        """Row counts of every table and the split sizes."""
        return {
            "split": self.split.sizes(),
            "tasks": {n: {"train": t.train.num_rows, "eval": t.eval.num_rows} for n, t in self.tasks.items()},
            "streams": {n: s.num_rows for n, s in self.streams.items()},
        }

    def describe(self) -> dict:
        """The content of ``suite.json`` (sizes, task order, answer vocabularies, spec, split indices)."""
        return {
            "suite": "digits",
            "seed": self.seed,
            "spec": self.spec.to_dict(),
            "task_order": list(self.task_order),
            "tasks": {
                n: {"description": t.description, "answer_vocab": list(t.answer_vocab), "train_rows": t.train.num_rows, "eval_rows": t.eval.num_rows}
                for n, t in self.tasks.items()
            },
            "streams": {n: {"rows": s.num_rows} for n, s in self.streams.items()},
            "sizes": self.sizes(),
            "split": self.split.to_dict(),
        }


def build_suite(seed: int = 0) -> DigitsSuite:
    """Build the five tasks and the two streams for ``seed`` (deterministic; about a second)."""
    split = make_split(seed)
    return DigitsSuite(
        seed=int(seed),
        spec=V.DIGITS_SPEC,
        split=split,
        task_order=TASK_ORDER,
        tasks={name: build_task(name, split, seed) for name in TASK_ORDER},
        streams={"kd": kd_stream(split, seed), "probe": probe_stream(split, seed)},
    )


__all__ = [
    "TASK_ORDER", "PLUS_K", "COMPARE_K", "TASK_DEFS", "TRAIN_SCHEMA", "EVAL_SCHEMA", "STREAM_SCHEMA", "PRETRAIN_SCHEMA",
    "load_digit_images", "make_split", "DigitsSplit", "Item", "TaskDef", "DigitsTask", "build_task",
    "generation_stream", "kd_stream", "probe_stream", "pretrain_examples", "PretrainEval", "pretrain_eval",
    "DigitsSuite", "build_suite",
]
