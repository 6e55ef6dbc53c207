"""The digits benchmark: a seeded image split, five continual-learning tasks and two generation streams.

Split of scikit-learn's 1,797 digits (stratified per digit, seeded; sizes per digit / total):

==================  ============  ======  ====================================================
pool                per digit     total   used for
==================  ============  ======  ====================================================
task eval x 5       8 each        400     eval rows of each task (80 images per task)
holdout             15            150     model-card eval (pre-training questions), judge
                                          held-out accuracy, reference images of the probe
pretrain            the rest      1,247   pre-training (understanding + generation), judge
                                          training, the ``kd`` stream, and the task train pools
task train x 5      20 each       1,000   train rows of each task (200 images per task),
                                          disjoint subsets of the pretrain pool
==================  ============  ======  ====================================================

Decision: the task train pools are **inside** the pre-training pool (the base model has seen those
images when learning to name and draw digits; the tasks teach new *skills*, not new images), which
keeps as many images as possible for pre-training. The task eval pools and the holdout pool are held
out from everything: pre-training, every task's train rows, the judge's training set and the
``kd`` stream. All ten task pools are mutually disjoint.

Tasks (in :data:`TASK_ORDER`), each a new instruction with its own answer vocabulary, disjoint from
the other tasks' and from pre-training's (English digit words):

- ``parity``:  "is this digit even or odd ?"                          -> even | odd
- ``plus_k``:  "what is this digit plus three ?" (k = 1..9)           -> numerals 1..18
- ``compare``: "is this digit greater than five ?" (k = 0..8)          -> yes | no
- ``name``:    "what is the spanish name of this digit ?"              -> cero .. nueve
- ``pair``:    two images, "which digit is larger , the first or the second ?" -> first | second | same

Rows: each task has 400 train rows (its 200 images, each twice, in a seeded order, with a fresh
random parameter k / partner image each time) and 80 eval rows (one per eval image; for ``pair`` the
eval image is the first image and its partner is drawn from the same eval pool). ``pair`` draws the
answer class uniformly, then a partner image that makes it true.

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
EVAL_PER_DIGIT_PER_TASK = 8
HOLDOUT_PER_DIGIT = 15
TRAIN_PER_DIGIT_PER_TASK = 20
TRAIN_ROWS_PER_TASK = 400
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
        pretrain: images for pre-training, the judge's training set and the ``kd`` stream; the task
            train pools are subsets of it.
        holdout: held out from everything; model-card eval, judge accuracy, probe references.
        task_train: per task, its train pool (a subset of ``pretrain``; pools mutually disjoint).
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
    train_parts: dict[str, list[np.ndarray]] = {t: [] for t in tasks}
    holdout, pretrain = [], []
    n_eval, n_train = EVAL_PER_DIGIT_PER_TASK, TRAIN_PER_DIGIT_PER_TASK
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        need = len(tasks) * (n_eval + n_train) + HOLDOUT_PER_DIGIT
        if idx.size < need:
            raise ValueError(f"make_split: digit {digit} has {idx.size} images, the split needs {need}")
        pos = 0
        for t in tasks:
            eval_parts[t].append(idx[pos : pos + n_eval])
            pos += n_eval
        holdout.append(idx[pos : pos + HOLDOUT_PER_DIGIT])
        pos += HOLDOUT_PER_DIGIT
        rest = idx[pos:]
        pretrain.append(rest)
        for k, t in enumerate(tasks):
            train_parts[t].append(rest[k * n_train : (k + 1) * n_train])
    cat = lambda parts: np.sort(np.concatenate(parts)).astype(np.int64)  # noqa: E731
    return DigitsSplit(
        pretrain=cat(pretrain),
        holdout=cat(holdout),
        task_train={t: cat(p) for t, p in train_parts.items()},
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
    d, k = int(labels[i]), int(rng.integers(1, 10))
    return Item((i,), f"what is this digit plus {V.DIGIT_WORDS[k]} ?", str(d + k), k)


def _compare(i: int, labels: np.ndarray, rng: np.random.Generator, pool: np.ndarray) -> Item:
    d, k = int(labels[i]), int(rng.integers(0, 9))
    return Item((i,), f"is this digit greater than {V.DIGIT_WORDS[k]} ?", "yes" if d > k else "no", k)


def _name(i: int, labels: np.ndarray, rng: np.random.Generator, pool: np.ndarray) -> Item:
    return Item((i,), "what is the spanish name of this digit ?", V.SPANISH_DIGIT_WORDS[int(labels[i])])


PAIR_QUESTION = "which digit is larger , the first or the second ?"


def _pair(i: int, labels: np.ndarray, rng: np.random.Generator, pool: np.ndarray) -> Item:
    """Partner drawn from ``pool`` so that the answer class (first / second / same) is uniform."""
    d = int(labels[i])
    others = pool[pool != i]
    other_labels = labels[others]
    choices = {"first": others[other_labels < d], "second": others[other_labels > d], "same": others[other_labels == d]}
    possible = [a for a in ("first", "second", "same") if choices[a].size]
    if not possible:
        raise ValueError(f"pair task: pool of {pool.size} images has no partner for image {i}")
    answer = possible[int(rng.integers(len(possible)))]
    j = int(rng.choice(choices[answer]))
    return Item((i, j), PAIR_QUESTION, answer)


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
    "plus_k": TaskDef("plus_k", "the digit plus k (k = 1..9), answered as a numeral", tuple(str(n) for n in range(1, 19)), _plus_k),
    "compare": TaskDef("compare", "is the digit greater than k (k = 0..8)", ("yes", "no"), _compare),
    "name": TaskDef("name", "the Spanish name of the digit", V.SPANISH_DIGIT_WORDS, _name),
    "pair": TaskDef("pair", "which of two digits is larger (first / second / same)", ("first", "second", "same"), _pair),
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
    "TASK_ORDER", "TASK_DEFS", "TRAIN_SCHEMA", "EVAL_SCHEMA", "STREAM_SCHEMA", "PRETRAIN_SCHEMA",
    "load_digit_images", "make_split", "DigitsSplit", "Item", "TaskDef", "DigitsTask", "build_task",
    "generation_stream", "kd_stream", "probe_stream", "pretrain_examples", "PretrainEval", "pretrain_eval",
    "DigitsSuite", "build_suite",
]
