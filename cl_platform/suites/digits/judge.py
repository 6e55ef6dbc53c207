"""Judges of generated images: which class does an image show, if any.

The generation score of a model is the fraction of its images that a judge labels as the class the
prompt asked for (:func:`generation_score`). A judge sits behind :class:`ImageJudge`, so the digits
judge here (a scikit-learn classifier on 8x8 pixels) can be swapped for a CLIP judge on real models.

:class:`DigitsJudge` is trained on real digits plus an extra "not a digit" class
(:data:`NOT_A_DIGIT`) made of uniform-noise images, pixel-shuffled digits and constant images, so
noise or scrambled output scores zero instead of being forced onto the nearest digit.

A judge is saved as one safetensors blob (:meth:`ImageJudge.to_bytes`): its arrays, plus a JSON of
its scalar settings in the safetensors header. Loading it reads numbers, never code: judges live in
the shared store, which anyone who may write tasks can write, so a judge that is a pickle (the
format before this one, ``judge.pkl``) is refused, never unpickled. :class:`DigitsJudge` predicts
with numpy from its stored arrays (the same one-vs-one vote as scikit-learn's ``SVC.predict``), so a
loaded judge needs no scikit-learn estimator and labels every image exactly as the fitted one.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

#: Label of an image that shows no digit.
NOT_A_DIGIT = 10
_FORMAT = "cl_platform.judge/2"
_META_KEY = "cl_platform.judge"
#: The first byte of a pickle of protocol 2 and later (then the protocol): how an old ``judge.pkl``
#: is told apart in the error (it is never unpickled; a safetensors blob may start with it too).
_PICKLE_START = b"\x80"


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
    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict]:
        """``(arrays, settings)``: what prediction needs, as numeric arrays and JSON-able scalars."""

    @classmethod
    @abstractmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], settings: dict) -> "ImageJudge":
        """Rebuild a judge from :meth:`to_arrays`; raises ValueError on arrays that do not fit together."""

    def to_bytes(self) -> bytes:
        """The judge as one safetensors blob: :meth:`to_arrays`, and in its header, under
        ``cl_platform.judge``, a JSON of the format, the judge class and the settings.

        The same judge gives the same bytes (one metadata key: safetensors orders several at random).
        """
        from safetensors.numpy import save

        arrays, settings = self.to_arrays()
        head = json.dumps({"format": _FORMAT, "class": type(self).__name__, "settings": settings}, sort_keys=True)
        return save({k: np.ascontiguousarray(v) for k, v in sorted(arrays.items())}, metadata={_META_KEY: head})

    @classmethod
    def from_bytes(cls, data: bytes) -> "ImageJudge":
        """Inverse of :meth:`to_bytes`; on :class:`ImageJudge` itself, returns whichever judge class wrote it.

        Only numbers are read (safetensors arrays and JSON): a pickled judge is refused, never loaded.
        """
        from safetensors.numpy import load

        name = cls.__name__
        data = bytes(data)
        try:
            arrays = load(data)
            header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
            meta = json.loads((header.get("__metadata__") or {}).get(_META_KEY) or "{}")
            settings = meta.get("settings")
        except Exception as e:  # noqa: BLE001 - re-raised with context
            if data[:1] == _PICKLE_START and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
                raise ValueError(f"{name}.from_bytes: this is a pickled judge (the format before {_FORMAT!r}); "
                                 "pickles are never loaded, as loading one runs code. Write the judge again (for "
                                 "the digits suite: python -m cl_platform.suites.digits --store URL)") from None
            raise ValueError(f"{name}.from_bytes: not a judge written by ImageJudge.to_bytes ({e})") from e
        if meta.get("format") != _FORMAT or not isinstance(settings, dict):
            raise ValueError(f"{name}.from_bytes: not a judge written by ImageJudge.to_bytes "
                             f"(format {meta.get('format')!r}, expected {_FORMAT!r})")
        klass = JUDGE_CLASSES.get(meta.get("class"))
        if klass is None or not issubclass(klass, cls):
            raise ValueError(f"{name}.from_bytes: the bytes hold a {meta.get('class')!r} judge, not a {name}")
        return klass.from_arrays(arrays, settings)

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

    :meth:`fit` trains a scikit-learn ``SVC`` and keeps what prediction needs as arrays (support
    vectors, dual coefficients, intercepts, support counts, classes) plus its ``gamma``;
    :meth:`predict` works from those alone, fitted or loaded alike.

    Args:
        seed: seed of the negatives' generator (the SVC itself is deterministic).
        n_noise: uniform-noise negatives added at :meth:`fit`.
        n_shuffled: pixel-shuffled negatives added at :meth:`fit` (drawn from the training digits).
        C: SVC regularisation.

    Attributes:
        svc: the fitted scikit-learn ``SVC`` (``None`` for a loaded judge).
    """

    #: The arrays of :meth:`to_arrays`, by name: their dtype kind (``"f"`` float, ``"i"`` integer) and rank.
    ARRAYS = {"support_vectors": ("f", 2), "dual_coef": ("f", 2), "intercept": ("f", 1),
              "n_support": ("i", 1), "classes": ("i", 1)}
    #: Images per chunk of the kernel computation (bounds its ``[chunk, n_sv, 64]`` temporary).
    CHUNK = 128

    def __init__(self, seed: int = 0, *, n_noise: int = 300, n_shuffled: int = 300, C: float = 10.0) -> None:
        self.seed = int(seed)
        self.n_noise = int(n_noise)
        self.n_shuffled = int(n_shuffled)
        self.C = float(C)
        self.svc = None
        self._arrays: dict[str, np.ndarray] | None = None
        self._gamma: float | None = None

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
        svc = SVC(C=self.C, kernel="rbf", gamma="scale").fit(x, y)
        # libsvm's own arrays (for two classes, the public dual_coef_ / intercept_ are sign-flipped)
        self._set_model({"support_vectors": svc.support_vectors_, "dual_coef": svc._dual_coef_,
                         "intercept": svc._intercept_, "n_support": svc.n_support_, "classes": svc.classes_},
                        float(svc._gamma))
        self.svc = svc
        return self

    def _set_model(self, arrays: dict[str, np.ndarray], gamma: float) -> None:
        """Check that the arrays form one one-vs-one RBF SVC on 64 features; keep them."""
        what = "DigitsJudge arrays"
        missing = sorted(set(self.ARRAYS) - set(arrays))
        if missing:
            raise ValueError(f"{what}: missing {missing}")
        out = {}
        for name, (kind, ndim) in self.ARRAYS.items():
            a = np.asarray(arrays[name])
            if a.dtype.kind not in (kind, "u" if kind == "i" else kind) or a.ndim != ndim:
                raise ValueError(f"{what}: {name} must be a rank-{ndim} {'float' if kind == 'f' else 'integer'} "
                                 f"array, got {a.dtype} of shape {a.shape}")
            if kind == "f" and not np.isfinite(a).all():
                raise ValueError(f"{what}: {name} has non-finite values")
            out[name] = a.astype(np.float64 if kind == "f" else np.int64)
        sv, coef, b, ns, classes = (out[k] for k in self.ARRAYS)
        k = len(classes)
        if k < 2 or len(np.unique(classes)) != k or classes.min() < 0 or classes.max() > NOT_A_DIGIT:
            raise ValueError(f"{what}: classes must be at least two distinct labels in 0..{NOT_A_DIGIT}, got {classes.tolist()}")
        if ns.shape != (k,) or (ns < 1).any() or ns.sum() != len(sv) or sv.shape[1:] != (64,):
            raise ValueError(f"{what}: n_support {ns.tolist()} does not fit {k} classes and support vectors "
                             f"of shape {sv.shape} (expected [sum(n_support), 64])")
        if coef.shape != (k - 1, len(sv)) or b.shape != (k * (k - 1) // 2,):
            raise ValueError(f"{what}: dual_coef {coef.shape} / intercept {b.shape} do not fit {k} classes and "
                             f"{len(sv)} support vectors (expected ({k - 1}, {len(sv)}) / ({k * (k - 1) // 2},))")
        if not (isinstance(gamma, (int, float)) and not isinstance(gamma, bool) and np.isfinite(gamma) and gamma > 0):
            raise ValueError(f"{what}: gamma must be a positive number, got {gamma!r}")
        self._arrays, self._gamma = out, float(gamma)

    def _decide(self, x: np.ndarray) -> np.ndarray:
        """libsvm's one-vs-one vote on features ``x`` ``[N, 64]``: each pair (i, j), i < j, votes i when
        its decision value is > 0, else j; the most votes win, a tie going to the lower class index."""
        a = self._arrays
        sv, coef, b, ns, classes = (a[k] for k in self.ARRAYS)
        start = np.concatenate([[0], np.cumsum(ns)])
        k = len(classes)
        labels = np.empty(len(x), dtype=np.int64)
        for lo in range(0, len(x), self.CHUNK):
            xc = x[lo:lo + self.CHUNK]
            kernel = np.exp(-self._gamma * ((xc[:, None, :] - sv[None, :, :]) ** 2).sum(axis=-1))
            votes = np.zeros((len(xc), k), dtype=np.int64)
            rows, p = np.arange(len(xc)), 0
            for i in range(k):
                si = slice(start[i], start[i + 1])
                for j in range(i + 1, k):
                    sj = slice(start[j], start[j + 1])
                    dec = kernel[:, si] @ coef[j - 1, si] + kernel[:, sj] @ coef[i, sj] + b[p]
                    votes[rows, np.where(dec > 0, i, j)] += 1
                    p += 1
            labels[lo:lo + len(xc)] = classes[np.argmax(votes, axis=1)]  # argmax: the first (lowest) of equals
        return labels

    def predict(self, images: np.ndarray) -> np.ndarray:
        if self._arrays is None:
            raise RuntimeError("DigitsJudge.predict: the judge is not fitted; call fit() or load() first")
        if len(images) == 0:
            return np.zeros(0, dtype=np.int64)
        return self._decide(self._features(images))

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

    def settings(self) -> dict:
        """The judge's scalar settings (JSON): its constructor arguments and the SVC's ``gamma``."""
        return {"seed": self.seed, "n_noise": self.n_noise, "n_shuffled": self.n_shuffled, "C": self.C,
                "kernel": "rbf", "gamma": self._gamma, "features": "pixels / 16"}

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict]:
        if self._arrays is None:
            raise RuntimeError("DigitsJudge.to_arrays: the judge is not fitted")
        return dict(self._arrays), self.settings()

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], settings: dict) -> "DigitsJudge":
        try:
            judge = cls(settings["seed"], n_noise=settings["n_noise"], n_shuffled=settings["n_shuffled"], C=settings["C"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"DigitsJudge settings {settings!r}: {e!r}") from None
        if settings.get("kernel") != "rbf" or settings.get("features") != "pixels / 16":
            raise ValueError(f"DigitsJudge settings: kernel {settings.get('kernel')!r} on features "
                             f"{settings.get('features')!r}; this judge is an RBF SVC on pixels / 16")
        judge._set_model(arrays, settings.get("gamma"))
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
