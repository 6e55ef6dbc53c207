"""Judges of generated images: which class does an image show, if any.

The generation score of a model is the fraction of its images that a judge labels as the class the
prompt asked for (:func:`generation_score`). A judge sits behind :class:`ImageJudge`, so the digits
judge here (a scikit-learn classifier on 8x8 pixels) can be swapped for a CLIP judge on real models.

:class:`DigitsJudge` is trained on real digits plus an extra "not a digit" class
(:data:`NOT_A_DIGIT`) made of uniform-noise images, pixel-shuffled digits and constant images, so
noise or scrambled output scores zero instead of being forced onto the nearest digit.
"""

from __future__ import annotations

import io
import pickle
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

#: Label of an image that shows no digit.
NOT_A_DIGIT = 10
_FORMAT = "cl_platform.judge/1"


def _as_images(images, what: str) -> np.ndarray:
    arr = np.asarray(images, dtype=np.float64)
    if arr.ndim == 2 and arr.shape == (8, 8):
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (8, 8):
        raise ValueError(f"{what}: expected images of shape [N, 8, 8], got {np.asarray(images).shape}")
    return arr


class ImageJudge(ABC):
    """A classifier of generated images.

    Labels are ints; :attr:`NOT_A_DIGIT` (10) means "shows none of the classes".
    """

    NOT_A_DIGIT: int = NOT_A_DIGIT

    @abstractmethod
    def fit(self, images: np.ndarray, labels: np.ndarray) -> "ImageJudge":
        """Train on real images and their labels (the judge adds its own negatives). Returns self."""

    @abstractmethod
    def predict(self, images: np.ndarray) -> np.ndarray:
        """Labels ``[N]`` (int64) of ``images`` ``[N, ...]``; ``NOT_A_DIGIT`` for no class."""

    def score(self, images: np.ndarray, requested_labels: Sequence[int] | np.ndarray) -> float:
        """Fraction of ``images`` labelled as ``requested_labels`` (same length). 0.0 for no images."""
        requested = np.asarray(requested_labels, dtype=np.int64).reshape(-1)
        n = len(images)
        if requested.shape[0] != n:
            raise ValueError(f"score: {n} images but {requested.shape[0]} requested labels")
        if n == 0:
            return 0.0
        return float(np.mean(self.predict(images) == requested))

    @abstractmethod
    def to_bytes(self) -> bytes:
        """Serialised judge (see :meth:`from_bytes`)."""

    @classmethod
    def from_bytes(cls, data: bytes) -> "ImageJudge":
        """Inverse of :meth:`to_bytes`; on :class:`ImageJudge` itself, returns whichever judge class wrote it.

        The bytes are a pickle: load judges only from a store you trust.
        """
        try:
            state = pickle.loads(data)
        except Exception as e:  # noqa: BLE001 - re-raised with context
            raise ValueError(f"{cls.__name__}.from_bytes: not a pickled judge ({e})") from e
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise ValueError(f"{cls.__name__}.from_bytes: not a judge written by ImageJudge.to_bytes")
        klass = JUDGE_CLASSES.get(state.get("class"))
        if klass is None or not issubclass(klass, cls):
            raise ValueError(f"{cls.__name__}.from_bytes: the bytes hold a {state.get('class')!r} judge, not a {cls.__name__}")
        return klass._from_state(state)

    @classmethod
    @abstractmethod
    def _from_state(cls, state: dict) -> "ImageJudge":
        """Rebuild a judge from the unpickled state dict its :meth:`to_bytes` wrote."""

    def save(self, path: str) -> None:
        """Write :meth:`to_bytes` to ``path`` (a local path or any fsspec URL)."""
        import fsspec

        with fsspec.open(str(path), "wb") as f:
            f.write(self.to_bytes())

    @classmethod
    def load(cls, path: str) -> "ImageJudge":
        """Read a judge written by :meth:`save`."""
        import fsspec

        with fsspec.open(str(path), "rb") as f:
            return cls.from_bytes(f.read())


def generation_score(judge: ImageJudge, images: np.ndarray, requested: Sequence[int] | np.ndarray) -> float:
    """Fraction of generated ``images`` that ``judge`` labels as the ``requested`` digit."""
    return judge.score(images, requested)


@dataclass(frozen=True)
class JudgeReport:
    """How good a judge is, measured on images it was not trained on.

    Attributes:
        accuracy: fraction of held-out real digits labelled with their digit.
        not_a_digit_recall: fraction of fresh negatives (noise, shuffled held-out digits) labelled NOT_A_DIGIT.
        digits_rejected: fraction of held-out real digits wrongly labelled NOT_A_DIGIT.
        n_heldout: number of held-out real digits.
        n_negatives: number of fresh negatives.
    """

    accuracy: float
    not_a_digit_recall: float
    digits_rejected: float
    n_heldout: int
    n_negatives: int

    def to_dict(self) -> dict:
        return asdict(self)


def noise_images(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` images of uniform random grey levels 0..16 ``[n, 8, 8]`` int64."""
    return rng.integers(0, 17, size=(n, 8, 8)).astype(np.int64)


def shuffled_images(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each image with its 64 pixels randomly permuted (same grey-level histogram, no digit shape)."""
    flat = np.asarray(images).reshape(len(images), -1).copy()
    for row in flat:
        rng.shuffle(row)
    return flat.reshape(-1, 8, 8).astype(np.int64)


def negative_images(real: np.ndarray, rng: np.random.Generator, *, n_noise: int, n_shuffled: int) -> np.ndarray:
    """Not-a-digit examples: uniform noise, pixel-shuffled copies of ``real`` and all 17 constant images."""
    real = np.asarray(real)
    pick = rng.choice(len(real), size=min(n_shuffled, len(real)), replace=False)
    constant = np.repeat(np.arange(17, dtype=np.int64), 64).reshape(17, 8, 8)
    return np.concatenate([noise_images(n_noise, rng), shuffled_images(real[pick], rng), constant])


class DigitsJudge(ImageJudge):
    """An RBF support-vector classifier on the 64 pixels (scaled to 0..1) of 8x8 digits.

    Args:
        seed: seed of the negatives' generator (the SVC itself is deterministic).
        n_noise: uniform-noise negatives added at :meth:`fit`.
        n_shuffled: pixel-shuffled negatives added at :meth:`fit` (drawn from the training digits).
        C: SVC regularisation.
    """

    def __init__(self, seed: int = 0, *, n_noise: int = 300, n_shuffled: int = 300, C: float = 10.0) -> None:
        self.seed = int(seed)
        self.n_noise = int(n_noise)
        self.n_shuffled = int(n_shuffled)
        self.C = float(C)
        self._clf = None

    @staticmethod
    def _features(images: np.ndarray) -> np.ndarray:
        arr = _as_images(images, "DigitsJudge(images)")
        return arr.reshape(len(arr), 64) / 16.0

    def fit(self, images: np.ndarray, labels: np.ndarray) -> "DigitsJudge":
        from sklearn.svm import SVC

        images = _as_images(images, "DigitsJudge.fit(images)")
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"DigitsJudge.fit: {images.shape[0]} images but {labels.shape[0]} labels")
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise ValueError(f"DigitsJudge.fit(labels): digits must be 0..9, got range [{labels.min()}, {labels.max()}]")
        rng = np.random.default_rng([self.seed, 0x4A5D])
        neg = negative_images(images, rng, n_noise=self.n_noise, n_shuffled=self.n_shuffled)
        x = np.concatenate([self._features(images), self._features(neg)])
        y = np.concatenate([labels, np.full(len(neg), NOT_A_DIGIT, dtype=np.int64)])
        self._clf = SVC(C=self.C, kernel="rbf", gamma="scale").fit(x, y)
        return self

    def predict(self, images: np.ndarray) -> np.ndarray:
        if self._clf is None:
            raise RuntimeError("DigitsJudge.predict: the judge is not fitted; call fit() or load() first")
        if len(images) == 0:
            return np.zeros(0, dtype=np.int64)
        return self._clf.predict(self._features(images)).astype(np.int64)

    def evaluate(self, images: np.ndarray, labels: np.ndarray, *, seed: int = 1) -> JudgeReport:
        """Accuracy on held-out real ``images`` and recall of NOT_A_DIGIT on fresh negatives made from them."""
        images = _as_images(images, "DigitsJudge.evaluate(images)")
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        pred = self.predict(images)
        rng = np.random.default_rng([int(seed), 0xE7A1])
        neg = np.concatenate([noise_images(len(images), rng), shuffled_images(images, rng)])
        return JudgeReport(
            accuracy=float(np.mean(pred == labels)),
            not_a_digit_recall=float(np.mean(self.predict(neg) == NOT_A_DIGIT)),
            digits_rejected=float(np.mean(pred == NOT_A_DIGIT)),
            n_heldout=int(len(images)),
            n_negatives=int(len(neg)),
        )

    def to_bytes(self) -> bytes:
        import sklearn

        if self._clf is None:
            raise RuntimeError("DigitsJudge.to_bytes: the judge is not fitted")
        state = {
            "format": _FORMAT,
            "class": "DigitsJudge",
            "sklearn": sklearn.__version__,
            "params": {"seed": self.seed, "n_noise": self.n_noise, "n_shuffled": self.n_shuffled, "C": self.C},
            "clf": self._clf,
        }
        buf = io.BytesIO()
        pickle.dump(state, buf, protocol=pickle.HIGHEST_PROTOCOL)
        return buf.getvalue()

    @classmethod
    def _from_state(cls, state: dict) -> "DigitsJudge":
        judge = cls(**state["params"])
        judge._clf = state["clf"]
        return judge


#: Judge classes by the name their ``to_bytes`` records; add a CLIP judge here.
JUDGE_CLASSES: dict[str, type[ImageJudge]] = {"DigitsJudge": DigitsJudge}


def train_digits_judge(seed: int = 0) -> tuple[DigitsJudge, JudgeReport]:
    """Train the digits judge on the suite's pre-training pool and evaluate it on every held-out image.

    Held-out images: the holdout pool and all task eval pools of ``make_split(seed)`` (550 images),
    none of which the judge (or the base model) trains on.
    """
    from cl_platform.suites.digits.tasks import load_digit_images, make_split

    images, labels = load_digit_images()
    split = make_split(seed)
    heldout = np.sort(np.concatenate([split.holdout, *split.task_eval.values()]))
    judge = DigitsJudge(seed=seed).fit(images[split.pretrain], labels[split.pretrain])
    return judge, judge.evaluate(images[heldout], labels[heldout], seed=seed + 1)


__all__ = [
    "NOT_A_DIGIT", "JUDGE_CLASSES", "ImageJudge", "DigitsJudge", "JudgeReport", "generation_score", "train_digits_judge",
    "noise_images", "shuffled_images", "negative_images",
]
