"""The pre-training data of the digits base model: its sources and how batches mix them.

Every image comes from the pre-training pool of :func:`cl_platform.suites.digits.tasks.make_split`
(held-out and task-eval images are never used). Sources (``(tokens, answer_start)`` rows):

``understanding``
    ``<s> <boi> img <eoi> what digit is this ? <sep> seven </s>``, one row per pool image
    (:func:`cl_platform.suites.digits.tasks.pretrain_examples`).
``paraphrase``
    The same skill asked in other words (:data:`DIGIT_QUESTIONS`: "which number is this ?",
    "what is the digit in this image ?", ...). With a single phrasing the model reads the digit
    only when prompted exactly so; its digit representation at ``<sep>`` under a new question was
    linearly decodable for only 71-82 % of held-out images, and LoRA upper bounds stayed below 0.8.
``choice``
    Two offered digit words, one of them the image's digit: half the rows ask for the matching
    one ("is this digit three or seven ?" -> the image's digit), half for the other one ("which of
    three and seven is no this digit ?" -> the word that is not the image's digit; the closed
    vocabulary has no "not"). The second kind cannot be answered from the image alone: it needs
    the image and the words of the question combined at ``<sep>``. Without such rows the base
    reads only the image there (a linear probe recovers a number named in the question at chance
    level, 0.11-0.20), and an adapter on the MLPs cannot learn an answer that depends on a
    question word. It teaches matching only, never a task's skill.
``two_images``
    Two images and "what is the first digit ?" / "... second ..." -> that image's digit word:
    reading digits in an interleaved multi-image context, as a unified model is pre-trained on.
    The answers are English words (the ``pair`` task names a digit shown twice, in German).
``generation``
    ``<s> draw a seven <sep> <boi> img <eoi> </s>``, one row per pool image.
``text``
    ``<s> write w1 .. wn <sep> w1 .. wn </s>``: copying random word sequences drawn from the whole
    word list. Without it, every word the base never had to *emit* (all the tasks' answers) keeps
    an untrained LM-head row; those rows collapse onto one shared direction (cosine ~0.94) and
    adapters on the MLPs alone cannot tell ``even`` from ``odd`` (LoRA upper bounds 0.06-0.50).
    The sequences are random, so no task knowledge leaks into the base model.

:class:`MixtureBatches` draws training batches: "short" batches mix the single-image and text
sources row by row according to their weights; with probability ``long_prob`` a step is a
"long" batch of two-image rows (about twice as long, so half as many rows: the token count per
step stays about the same and nothing is padded to the long length).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from cl_platform.suites.digits import vocab as V
from cl_platform.train.batches import Batch, Row, collate_rows

#: Other phrasings of the pre-training question, answered with the English digit word.
DIGIT_QUESTIONS: tuple[str, ...] = (
    "which digit is this ?",
    "what number is this ?",
    "which number is this ?",
    "what is this digit ?",
    "what is this number ?",
    "what digit is in this image ?",
    "what is the digit in this image ?",
    "which number is in the image ?",
    "what is the number in this image ?",
    "name this digit .",
    "name the digit in this image .",
)
#: Choice questions answered with the offered word that *is* the image's digit; ``{a}`` and
#: ``{b}`` are two digit words, one of them the image's digit.
CHOICE_QUESTIONS: tuple[str, ...] = (
    "is this digit {a} or {b} ?",
    "is this {a} or {b} ?",
    "which digit is this , {a} or {b} ?",
    "is this number {a} or {b} ?",
    "is the digit in this image {a} or {b} ?",
)
#: Choice questions answered with the offered word that is *not* the image's digit.
EXCLUSION_QUESTIONS: tuple[str, ...] = (
    "which of {a} and {b} is no this digit ?",
    "which is no this digit , {a} or {b} ?",
    "of {a} and {b} , which is no the digit in this image ?",
)
#: Questions about one of two images, by position.
TWO_IMAGE_QUESTIONS: dict[str, tuple[str, ...]] = {
    "first": ("what is the first digit ?", "which digit is the first ?", "name the first digit ."),
    "second": ("what is the second digit ?", "which digit is the second ?", "name the second digit ."),
}


def _pool(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from cl_platform.suites.digits.tasks import load_digit_images, make_split

    images, labels = load_digit_images()
    return images, labels, make_split(seed).pretrain


def understanding_rows(seed: int) -> list[Row]:
    """The canonical understanding rows (one per pool image)."""
    from cl_platform.suites.digits.tasks import pretrain_examples
    from cl_platform.train.batches import rows_from_table

    return rows_from_table(pretrain_examples(seed)[0])


def generation_rows(seed: int) -> list[Row]:
    """The generation rows (one per pool image)."""
    from cl_platform.suites.digits.tasks import pretrain_examples
    from cl_platform.train.batches import rows_from_table

    return rows_from_table(pretrain_examples(seed)[1])


def paraphrase_rows(seed: int) -> list[Row]:
    """One row per pool image with a random phrasing from :data:`DIGIT_QUESTIONS`."""
    images, labels, pool = _pool(seed)
    rng = np.random.default_rng([int(seed), 0x9A4A])
    rows = []
    for i in rng.permutation(pool):
        q = DIGIT_QUESTIONS[int(rng.integers(len(DIGIT_QUESTIONS)))]
        rows.append(V.understanding_example(images[i], q, V.DIGIT_WORDS[int(labels[i])]))
    return rows


def choice_rows(seed: int, *, exclusion_share: float = 0.5) -> list[Row]:
    """One row per pool image: its digit and a random other digit offered; ask for the match or the other."""
    images, labels, pool = _pool(seed)
    rng = np.random.default_rng([int(seed), 0xC401])
    rows = []
    for i in rng.permutation(pool):
        d = int(labels[i])
        other = int(rng.choice([x for x in range(10) if x != d]))
        a, b = (d, other) if rng.integers(2) else (other, d)
        exclude = bool(rng.random() < exclusion_share)
        qs = EXCLUSION_QUESTIONS if exclude else CHOICE_QUESTIONS
        q = qs[int(rng.integers(len(qs)))]
        answer = other if exclude else d
        rows.append(V.understanding_example(images[i], q.format(a=V.DIGIT_WORDS[a], b=V.DIGIT_WORDS[b]), V.DIGIT_WORDS[answer]))
    return rows


def two_image_rows(seed: int) -> list[Row]:
    """One row per pool image: it and a random pool partner, in random order, asking for one of them."""
    images, labels, pool = _pool(seed)
    rng = np.random.default_rng([int(seed), 0x2122])
    rows = []
    for i in rng.permutation(pool):
        j = int(rng.choice(pool[pool != i]))
        pair = (int(i), j) if rng.integers(2) else (j, int(i))
        which = ("first", "second")[int(rng.integers(2))]
        target = pair[0] if which == "first" else pair[1]
        qs = TWO_IMAGE_QUESTIONS[which]
        q = qs[int(rng.integers(len(qs)))]
        rows.append(V.understanding_example(images[list(pair)], q, V.DIGIT_WORDS[int(labels[target])]))
    return rows


def text_rows(seed: int, n_rows: int, *, max_words: int = 32) -> list[Row]:
    """``n_rows`` rows ``<s> write w1 .. wn <sep> w1 .. wn </s>`` (n uniform in 1..max_words)."""
    rng = np.random.default_rng([int(seed), 0x7E47])
    word_ids = np.asarray(V.word_ids())
    write = V.encode_text("write")
    rows = []
    for _ in range(n_rows):
        words = rng.choice(word_ids, size=int(rng.integers(1, max_words + 1))).tolist()
        rows.append(V.make_example([V.BOS_ID, *write, *words, V.SEP_ID], [*words, V.EOS_ID]))
    return rows


@dataclass
class Source:
    """One pre-training source.

    Attributes:
        name: source name (``understanding``, ``paraphrase``, ``choice``, ``generation``, ``text``, ``two_images``).
        rows: its ``(tokens, answer_start)`` rows.
        weight: share of the rows of a short batch (ignored for the long source).
    """

    name: str
    rows: list[Row]
    weight: float


@dataclass(frozen=True)
class MixtureWeights:
    """How the sources are mixed.

    Attributes:
        understanding: row share of the canonical question in a short batch.
        paraphrase: row share of the other phrasings.
        choice: row share of the choice (matching and exclusion) questions.
        generation: row share of generation rows.
        text: row share of word-copying rows.
        exclusion_share: fraction of the choice rows that ask for the word that is *not* the digit.
        long_prob: probability that a step is a long batch of two-image rows.
        long_batch_fraction: rows of a long batch as a fraction of the batch size.
    """

    understanding: float = 0.15
    paraphrase: float = 0.1
    choice: float = 0.15
    generation: float = 0.4
    text: float = 0.2
    exclusion_share: float = 0.5
    long_prob: float = 0.15
    long_batch_fraction: float = 0.5

    def __post_init__(self) -> None:
        shares = (self.understanding, self.paraphrase, self.choice, self.generation, self.text)
        if min(shares) < 0 or sum(shares) <= 0:
            raise ValueError(f"MixtureWeights: row shares must be >= 0 with a positive sum, got {shares}")
        if not 0.0 <= self.long_prob < 1.0:
            raise ValueError(f"MixtureWeights.long_prob must be in [0, 1), got {self.long_prob}")
        if not 0.0 < self.long_batch_fraction <= 1.0:
            raise ValueError(f"MixtureWeights.long_batch_fraction must be in (0, 1], got {self.long_batch_fraction}")


def build_sources(seed: int, weights: MixtureWeights = MixtureWeights(), *, text_rows_n: int = 2000) -> tuple[list[Source], Source]:
    """The short sources (with their weights) and the long (two-image) source for ``seed``."""
    short = [
        Source("understanding", understanding_rows(seed), weights.understanding),
        Source("paraphrase", paraphrase_rows(seed), weights.paraphrase),
        Source("choice", choice_rows(seed, exclusion_share=weights.exclusion_share), weights.choice),
        Source("generation", generation_rows(seed), weights.generation),
        Source("text", text_rows(seed, text_rows_n), weights.text),
    ]
    return [s for s in short if s.weight > 0], Source("two_images", two_image_rows(seed), 0.0)


class _Cycle:
    """Endless reshuffled passes over a list of rows."""

    def __init__(self, rows: Sequence[Row], rng: np.random.Generator) -> None:
        if not rows:
            raise ValueError("pre-training source has no rows")
        self.rows, self.rng = rows, rng
        self.order: list[int] = []

    def next(self) -> Row:
        if not self.order:
            self.order = self.rng.permutation(len(self.rows)).tolist()
        return self.rows[self.order.pop()]


class MixtureBatches:
    """Endless training batches over the pre-training sources (see the module docstring)."""

    def __init__(self, short: Sequence[Source], long: Source | None, batch_size: int, weights: MixtureWeights, seed: int) -> None:
        self.rng = np.random.default_rng([int(seed), 0x9E7])
        self.short = [_Cycle(s.rows, self.rng) for s in short]
        total = sum(s.weight for s in short)
        self.p = np.array([s.weight / total for s in short])
        self.long = _Cycle(long.rows, self.rng) if long is not None and weights.long_prob > 0 else None
        self.batch_size = int(batch_size)
        self.long_size = max(1, int(round(batch_size * weights.long_batch_fraction)))
        self.long_prob = weights.long_prob

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self.long is not None and self.rng.random() < self.long_prob:
            rows = [self.long.next() for _ in range(self.long_size)]
        else:
            picks = self.rng.choice(len(self.short), size=self.batch_size, p=self.p)
            rows = [self.short[k].next() for k in picks]
        return collate_rows(rows, V.PAD_ID)


__all__ = [
    "CHOICE_QUESTIONS",
    "DIGIT_QUESTIONS",
    "EXCLUSION_QUESTIONS",
    "TWO_IMAGE_QUESTIONS",
    "MixtureBatches",
    "MixtureWeights",
    "Source",
    "build_sources",
    "choice_rows",
    "generation_rows",
    "paraphrase_rows",
    "text_rows",
    "two_image_rows",
    "understanding_rows",
]
