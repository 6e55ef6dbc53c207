"""The teacher's top-K log-probs on a fixed token stream, computed once and stored.

The KD teacher is the frozen base model (adapters disabled) and the KD stream is fixed, so its
top-K targets never change during a run, a sequence of rounds or a sweep (docs/architecture.md,
"The method"). :func:`compute_teacher_cache` runs the teacher over the stream once;
:class:`TeacherCache` holds the result, serialises it with safetensors (bytes for the artifact
store, files for local use) and hands out :class:`~cl_platform.methods.kd.TeacherTargets` for a
batch of stream rows, so the KD loss needs one forward pass (the student's) instead of two.

Layout: rows are stored packed, one after the other, without padding: ``ids`` and ``logprobs``
are ``[total_positions, K]`` and ``lengths[i]`` is the number of positions of row ``i``. Position
``t`` of a row holds the teacher's prediction for token ``t + 1`` (the logits at ``t``), so a row
of n tokens has n positions, the last one predicting past the end (mask it with
:func:`~cl_platform.methods.kd.shifted_mask`).

Precision: ids are int32. Log-probs (temperature 1, the form :func:`~cl_platform.methods.kd.kd_loss`
takes) are float16 by default, float32 on request. float16 rounding moves a log-prob ``a`` by at
most ``eps = max(|a| * 2**-11, 2**-25)`` (finite values below -65504 become -inf, i.e.
probability 0, which they are in float32 anyway; -inf is kept). If every stored log-prob of a
position is off by at most ``eps``, its renormalised log-probs at temperature T move by at most
``eta = 2 * eps / T`` and its KL term (hence the masked mean) by at most::

    T**2 * (eta + (exp(eta) - 1) * M),   M = max |log p_t - log p_s| over the position's K ids

because ``KL(p'||q) - KL(p||q) = KL(p'||p) + sum (p' - p)(log p - log q)``, ``KL(p'||p) <= eta``
and ``||p' - p||_1 <= exp(eta) - 1``. This is a worst case (every rounding error pushing the
same way): on the tests' tiny model (log-probs down to about -20, T=2, KD loss about 1.5) the bound
is about 5% of the loss and the measured error about 3e-6 of it. float32 (``2**-24`` relative)
makes the bound ~8000x smaller at twice the size of the log-probs; ids dominate the size anyway.

Validity: a cache is tied to (base model, stream, K, T) through :func:`cache_key`, and carries
the sha256 of the stream's tokens. The stored log-probs do not depend on T (the loss applies T),
but the key includes it, so a change of T is a new cache by construction; a cache with a larger K could also
serve a smaller K (its ids are sorted), which this module does not exploit.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Sequence

import safetensors.torch
import torch
from safetensors import safe_open

from cl_platform.methods.kd import TeacherTargets, _check_temperature, teacher_targets_from_logits

__all__ = [
    "CACHE_FORMAT",
    "CACHE_SCHEMA_VERSION",
    "SHARD_INDEX",
    "ShardedTeacherCache",
    "TeacherCache",
    "cache_key",
    "compute_teacher_cache",
    "shard_name",
    "tokens_digest",
    "write_sharded_index",
]

CACHE_FORMAT = "cl_platform.teacher_cache"
CACHE_SCHEMA_VERSION = 1
_LOGPROB_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def cache_key(base_model_id: str, stream_id: str, k: int, temperature: float) -> str:
    """Stable sha256 hex digest naming the teacher cache of (base model, stream, K, T).

    The digest covers the cache schema version too, so a format change never reuses old caches.
    ``base_model_id`` should identify the weights (e.g. a URI plus revision or content hash),
    ``stream_id`` the exact stream contents (e.g. name plus manifest hash).
    """
    for name, value in (("base_model_id", base_model_id), ("stream_id", stream_id)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"cache_key: {name} must be a non-empty string, got {value!r}")
    _check_k(k, "cache_key: k")
    _check_temperature(temperature, "cache_key: temperature")
    payload = {
        "schema": CACHE_SCHEMA_VERSION,
        "base_model": base_model_id,
        "stream": stream_id,
        "k": int(k),
        "temperature": float(temperature),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def tokens_digest(rows: Sequence[Sequence[int]]) -> str:
    """sha256 hex digest of a token stream (row boundaries included), order-sensitive."""
    h = hashlib.sha256()
    for row in rows:
        ids = torch.as_tensor(list(row), dtype=torch.int64)
        h.update(len(ids).to_bytes(8, "little"))
        h.update(ids.numpy().astype("<i8").tobytes())
    return h.hexdigest()


def _check_k(k: int, what: str) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{what} must be an int >= 1, got {k!r}")


@dataclass(eq=False)
class TeacherCache:
    """Teacher top-K targets for every position of every row of a token stream.

    Attributes:
        ids: int32 ``[total_positions, K]``, rows packed one after the other.
        logprobs: float16 or float32 ``[total_positions, K]``, temperature-1 log-probs at ``ids``.
        lengths: int64 ``[N]``, number of positions (= tokens) of each row; sums to
            ``total_positions``.
        k: K, ids per position.
        temperature: the KD temperature this cache was made for (part of the key; the stored
            log-probs themselves are at temperature 1).
        key: :func:`cache_key` of (base model, stream, K, T), or "" when not keyed.
        tokens_sha256: :func:`tokens_digest` of the stream the cache was computed on.
    """

    ids: torch.Tensor
    logprobs: torch.Tensor
    lengths: torch.Tensor
    k: int
    temperature: float
    key: str = ""
    tokens_sha256: str = ""
    _offsets: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check_k(self.k, "TeacherCache.k")
        _check_temperature(self.temperature, "TeacherCache.temperature")
        if self.ids.dtype != torch.int32 or self.ids.dim() != 2 or self.ids.shape[1] != self.k:
            raise ValueError(
                f"TeacherCache.ids must be int32 [positions, k={self.k}], got {self.ids.dtype} {tuple(self.ids.shape)}"
            )
        if self.logprobs.dtype not in _LOGPROB_DTYPES.values():
            raise ValueError(f"TeacherCache.logprobs must be float16 or float32, got {self.logprobs.dtype}")
        if self.logprobs.shape != self.ids.shape:
            raise ValueError(
                f"TeacherCache.logprobs shape {tuple(self.logprobs.shape)} differs from ids shape {tuple(self.ids.shape)}"
            )
        if self.lengths.dim() != 1 or self.lengths.dtype.is_floating_point:
            raise ValueError(f"TeacherCache.lengths must be a 1-D integer tensor, got {self.lengths.dtype} {tuple(self.lengths.shape)}")
        self.lengths = self.lengths.to(torch.int64)
        if len(self.lengths) and int(self.lengths.min()) < 1:
            raise ValueError("TeacherCache.lengths: every row must have at least one position")
        if int(self.lengths.sum()) != self.ids.shape[0]:
            raise ValueError(
                f"TeacherCache.lengths sum to {int(self.lengths.sum())} but ids hold {self.ids.shape[0]} positions"
            )
        self.temperature = float(self.temperature)
        self._offsets = torch.cumsum(self.lengths, 0) - self.lengths

    def __len__(self) -> int:
        """Number of stream rows."""
        return len(self.lengths)

    @property
    def max_length(self) -> int:
        """Length of the longest row (0 for an empty cache)."""
        return int(self.lengths.max()) if len(self.lengths) else 0

    def check(
        self,
        *,
        k: int | None = None,
        temperature: float | None = None,
        key: str | None = None,
        tokens_sha256: str | None = None,
    ) -> None:
        """Raise ValueError if the cache was not made for the given K, T, key or stream digest.

        Arguments left None are not checked.
        """
        problems = []
        if k is not None and k != self.k:
            problems.append(f"k: expected {k}, cache has {self.k}")
        if temperature is not None and float(temperature) != self.temperature:
            problems.append(f"temperature: expected {float(temperature)}, cache has {self.temperature}")
        if key is not None and key != self.key:
            problems.append(f"key: expected {key!r}, cache has {self.key!r}")
        if tokens_sha256 is not None and tokens_sha256 != self.tokens_sha256:
            problems.append(f"tokens_sha256: expected {tokens_sha256!r}, cache has {self.tokens_sha256!r}")
        if problems:
            raise ValueError("teacher cache does not match what was asked for: " + "; ".join(problems))

    def targets(self, rows: Sequence[int], length: int) -> TeacherTargets:
        """Targets for a batch of stream rows, right-padded (ids 0, log-probs 0) to ``length``.

        Rows longer than ``length`` are truncated to their first ``length`` positions, which is
        exact for a causal teacher. Returned tensors are on the CPU in the stored dtypes (int32,
        float16/float32); :func:`~cl_platform.methods.kd.kd_loss` upcasts them.
        """
        rows = [int(r) for r in rows]
        for r in rows:
            if not 0 <= r < len(self):
                raise ValueError(f"TeacherCache.targets: row {r} out of range for a stream of {len(self)} rows")
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"TeacherCache.targets: length must be an int >= 1, got {length!r}")
        ids = torch.zeros(len(rows), length, self.k, dtype=self.ids.dtype)
        logprobs = torch.zeros(len(rows), length, self.k, dtype=self.logprobs.dtype)
        for b, r in enumerate(rows):
            start, n = int(self._offsets[r]), min(int(self.lengths[r]), length)
            ids[b, :n] = self.ids[start : start + n]
            logprobs[b, :n] = self.logprobs[start : start + n]
        return TeacherTargets(ids, logprobs)

    # -- serialisation ------------------------------------------------------------------------

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {"ids": self.ids.contiguous(), "logprobs": self.logprobs.contiguous(), "lengths": self.lengths.contiguous()}

    def _metadata(self) -> dict[str, str]:
        return {
            "format": CACHE_FORMAT,
            "schema_version": str(CACHE_SCHEMA_VERSION),
            "k": str(self.k),
            "temperature": repr(self.temperature),
            "key": self.key,
            "tokens_sha256": self.tokens_sha256,
        }

    def to_bytes(self) -> bytes:
        """The cache as one safetensors blob (tensors ids/logprobs/lengths plus metadata)."""
        return safetensors.torch.save(self._tensors(), metadata=self._metadata())

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the cache to a local safetensors file, atomically (temp file, then rename)."""
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".teacher_cache.", suffix=".tmp", dir=directory)
        os.close(fd)
        try:
            safetensors.torch.save_file(self._tensors(), tmp, metadata=self._metadata())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    @classmethod
    def from_bytes(
        cls, data: bytes, *, k: int | None = None, temperature: float | None = None, key: str | None = None
    ) -> "TeacherCache":
        """Load from :meth:`to_bytes` output; ``k``/``temperature``/``key`` given are checked."""
        metadata = _read_metadata(data)
        try:
            tensors = safetensors.torch.load(data)
        except Exception as exc:  # SafetensorError and friends: report as bad input
            raise ValueError(f"teacher cache bytes are not a valid safetensors blob: {exc}") from exc
        cache = cls._from_parts(tensors, metadata, "teacher cache bytes")
        cache.check(k=k, temperature=temperature, key=key)
        return cache

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        k: int | None = None,
        temperature: float | None = None,
        key: str | None = None,
    ) -> "TeacherCache":
        """Load a file written by :meth:`save`; ``k``/``temperature``/``key`` given are checked."""
        source = f"teacher cache file {os.fspath(path)!r}"
        try:
            with safe_open(os.fspath(path), framework="pt") as f:
                metadata = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise ValueError(f"{source} is not a valid safetensors file: {exc}") from exc
        cache = cls._from_parts(tensors, metadata, source)
        cache.check(k=k, temperature=temperature, key=key)
        return cache

    @classmethod
    def _from_parts(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str], source: str) -> "TeacherCache":
        if metadata.get("format") != CACHE_FORMAT:
            raise ValueError(f"{source}: metadata format is {metadata.get('format')!r}, expected {CACHE_FORMAT!r}")
        if metadata.get("schema_version") != str(CACHE_SCHEMA_VERSION):
            raise ValueError(
                f"{source}: schema version {metadata.get('schema_version')!r} is not supported "
                f"(this code reads version {CACHE_SCHEMA_VERSION})"
            )
        missing = {"ids", "logprobs", "lengths"} - set(tensors)
        if missing:
            raise ValueError(f"{source}: missing tensors {sorted(missing)}")
        try:
            k, temperature = int(metadata["k"]), float(metadata["temperature"])
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{source}: metadata k/temperature missing or malformed: {exc}") from exc
        return cls(
            ids=tensors["ids"],
            logprobs=tensors["logprobs"],
            lengths=tensors["lengths"],
            k=k,
            temperature=temperature,
            key=metadata.get("key", ""),
            tokens_sha256=metadata.get("tokens_sha256", ""),
        )


def _read_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob (8-byte little-endian header size, JSON header)."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) < 8:
        raise ValueError("teacher cache bytes are too short to be a safetensors blob")
    size = int.from_bytes(bytes(data[:8]), "little")
    if size > len(data) - 8:
        raise ValueError(f"teacher cache bytes: header size {size} exceeds the {len(data)} bytes given")
    try:
        header: dict[str, Any] = json.loads(bytes(data[8 : 8 + size]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"teacher cache bytes: safetensors header is not JSON: {exc}") from exc
    return dict(header.get("__metadata__") or {})


def _as_rows(tokens: Sequence[Sequence[int]] | torch.Tensor) -> list[list[int]]:
    if isinstance(tokens, torch.Tensor):
        if tokens.dim() != 2 or tokens.dtype.is_floating_point:
            raise ValueError(f"compute_teacher_cache: a tokens tensor must be integer [N, L], got {tokens.dtype} {tuple(tokens.shape)}")
        return tokens.tolist()
    rows = [list(map(int, row)) for row in tokens]
    for i, row in enumerate(rows):
        if not row:
            raise ValueError(f"compute_teacher_cache: tokens row {i} is empty")
    return rows


def _is_peft_model(model: torch.nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


@torch.no_grad()
def compute_teacher_cache(
    model: torch.nn.Module,
    tokens: Sequence[Sequence[int]] | torch.Tensor,
    *,
    pad_id: int,
    k: int,
    temperature: float,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    key: str = "",
    logprob_dtype: torch.dtype = torch.float16,
    chunk_size: int = 4096,
) -> TeacherCache:
    """Run the teacher over a token stream once and keep its top-K log-probs at every position.

    The model runs in eval mode under ``torch.no_grad()`` (its training flag is restored after).
    A ``peft.PeftModel`` runs inside ``model.disable_adapter()``: the teacher is the frozen base.
    Rows are processed ``batch_size`` at a time, right-padded with ``pad_id`` plus an attention
    mask; with a causal model the padding does not change the logits of real positions.

    Args:
        model: a causal LM returning ``.logits`` ``[B, L, V]`` (or a tuple whose first item is).
        tokens: the stream, a list of token-id rows (any lengths >= 1) or an integer ``[N, L]``
            tensor (every row taken as L real tokens).
        pad_id: id used for padding (never read at real positions).
        k: K, the ids kept per position (<= vocab).
        temperature: the KD temperature the cache is for (recorded, part of the key).
        batch_size: rows per forward pass.
        device: where inputs go; default the device of the model's first parameter.
        key: :func:`cache_key` of (base model, stream, K, T), recorded for checks at load time.
        logprob_dtype: ``torch.float16`` (default, half the size) or ``torch.float32``; see the
            module docstring for the resulting loss error bound.
        chunk_size: positions per chunk of the float32 top-K computation.

    Returns:
        The :class:`TeacherCache` on the CPU.
    """
    rows = _as_rows(tokens)
    if not rows:
        raise ValueError("compute_teacher_cache: tokens is empty; need at least one row")
    _check_k(k, "compute_teacher_cache: k")
    _check_temperature(temperature, "compute_teacher_cache: temperature")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"compute_teacher_cache: batch_size must be an int >= 1, got {batch_size!r}")
    if logprob_dtype not in _LOGPROB_DTYPES.values():
        raise ValueError(f"compute_teacher_cache: logprob_dtype must be torch.float16 or torch.float32, got {logprob_dtype}")
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")

    forward_kwargs: dict[str, Any] = {}
    if hasattr(getattr(model, "config", None), "use_cache"):
        forward_kwargs["use_cache"] = False  # no KV cache for a single full-sequence pass

    ids_parts: list[torch.Tensor] = []
    logprob_parts: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    try:
        with model.disable_adapter() if _is_peft_model(model) else nullcontext():
            for start in range(0, len(rows), batch_size):
                batch = rows[start : start + batch_size]
                width = max(len(r) for r in batch)
                input_ids = torch.full((len(batch), width), int(pad_id), dtype=torch.long)
                attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
                for b, row in enumerate(batch):
                    input_ids[b, : len(row)] = torch.as_tensor(row, dtype=torch.long)
                    attention_mask[b, : len(row)] = 1
                out = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **forward_kwargs)
                logits = out.logits if hasattr(out, "logits") else out[0]
                found = teacher_targets_from_logits(logits, k, chunk_size=chunk_size)
                for b, row in enumerate(batch):
                    ids_parts.append(found.ids[b, : len(row)].to("cpu", torch.int32))
                    logprob_parts.append(found.logprobs[b, : len(row)].to("cpu", logprob_dtype))
    finally:
        model.train(was_training)

    return TeacherCache(
        ids=torch.cat(ids_parts),
        logprobs=torch.cat(logprob_parts),
        lengths=torch.tensor([len(r) for r in rows], dtype=torch.int64),
        k=k,
        temperature=float(temperature),
        key=key,
        tokens_sha256=tokens_digest(rows),
    )


# ------------------------------------------------------------------------------------ shards

#: Name of a sharded cache's index, written after every shard.
SHARD_INDEX = "index.json"


def shard_name(first_row: int, rows: int) -> str:
    """File name of the shard whose first row id is ``first_row`` and which holds ``rows`` rows."""
    return f"shard-{int(first_row):09d}-{int(rows):06d}.safetensors"


@dataclass(eq=False)
class ShardedTeacherCache:
    """A teacher cache stored as shards under a store folder, streamed by the workers.

    Layout: ``<prefix>/shard-*.safetensors`` (each a :class:`TeacherCache` of some stream rows, in
    the order of its ``row_ids`` entry in the index) and ``<prefix>/index.json``, written last::

        {"format": CACHE_FORMAT, "schema_version": 1, "k": K, "temperature": T, "key": ...,
         "rows": N, "shards": [{"file": ..., "row_ids": [...], "positions": P, "bytes": B}, ...]}

    A worker loads a shard the first time a batch needs one of its rows and keeps at most
    ``max_loaded`` shards in memory (least recently used dropped), so a cache far larger than a
    worker's memory can serve a run.
    """

    store: Any
    prefix: str
    index: dict[str, Any]
    max_loaded: int = 4
    _where: dict[int, tuple[int, int]] = field(init=False, repr=False)
    _loaded: "dict[int, TeacherCache]" = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._where = {}
        for s, shard in enumerate(self.index["shards"]):
            for local, row in enumerate(shard["row_ids"]):
                self._where[int(row)] = (s, local)
        if sorted(self._where) != list(range(int(self.index["rows"]))):
            raise ValueError(f"teacher cache {self.prefix}: the shards do not cover rows 0..{self.index['rows'] - 1} once each")
        self._loaded = {}

    @property
    def k(self) -> int:
        return int(self.index["k"])

    @property
    def temperature(self) -> float:
        return float(self.index["temperature"])

    @property
    def key(self) -> str:
        return str(self.index.get("key", ""))

    def __len__(self) -> int:
        return int(self.index["rows"])

    @classmethod
    def open(cls, store: Any, prefix: str, *, k: int | None = None, temperature: float | None = None,
             key: str | None = None, max_loaded: int = 4) -> "ShardedTeacherCache":
        """Open the cache under ``prefix`` (its index must exist: a cache without one is unfinished)."""
        try:
            index = json.loads(store.read_bytes(f"{prefix}/{SHARD_INDEX}"))
        except FileNotFoundError:
            raise FileNotFoundError(f"teacher cache {prefix}: no {SHARD_INDEX} (not built, or its build did not finish)") from None
        if index.get("format") != CACHE_FORMAT or index.get("schema_version") != CACHE_SCHEMA_VERSION:
            raise ValueError(f"teacher cache {prefix}/{SHARD_INDEX}: not a version-{CACHE_SCHEMA_VERSION} {CACHE_FORMAT} index")
        cache = cls(store=store, prefix=prefix, index=index, max_loaded=max_loaded)
        problems = [f"{name}: expected {want!r}, cache has {have!r}"
                    for name, want, have in (("k", k, cache.k), ("temperature", temperature, cache.temperature),
                                             ("key", key, cache.key)) if want is not None and want != have]
        if problems:
            raise ValueError("teacher cache does not match what was asked for: " + "; ".join(problems))
        return cache

    def _shard(self, s: int) -> TeacherCache:
        if s in self._loaded:
            self._loaded[s] = self._loaded.pop(s)  # most recently used last
            return self._loaded[s]
        file = self.index["shards"][s]["file"]
        cache = TeacherCache.from_bytes(self.store.read_bytes(f"{self.prefix}/{file}"), k=self.k)
        if len(cache) != len(self.index["shards"][s]["row_ids"]):
            raise ValueError(f"teacher cache {self.prefix}/{file}: {len(cache)} rows, the index lists "
                             f"{len(self.index['shards'][s]['row_ids'])}")
        self._loaded[s] = cache
        while len(self._loaded) > self.max_loaded:
            self._loaded.pop(next(iter(self._loaded)))
        return cache

    def targets(self, rows: Sequence[int], length: int) -> TeacherTargets:
        """As :meth:`TeacherCache.targets`, reading the shards the rows live in."""
        rows = [int(r) for r in rows]
        missing = [r for r in rows if r not in self._where]
        if missing:
            raise ValueError(f"ShardedTeacherCache.targets: rows {missing} out of range for a stream of {len(self)} rows")
        parts = [self._shard(self._where[r][0]).targets([self._where[r][1]], length) for r in rows]
        return TeacherTargets(torch.cat([p.ids for p in parts]), torch.cat([p.logprobs for p in parts]))


def write_sharded_index(store: Any, prefix: str, shards: Sequence[dict[str, Any]], *, k: int, temperature: float,
                        key: str) -> dict[str, Any]:
    """Write ``<prefix>/index.json`` over ``shards`` (each ``{"file", "row_ids", "positions", "bytes"}``),
    sorted by first row; the last write of a build, so a reader never sees half a cache."""
    ordered = sorted(shards, key=lambda s: min(s["row_ids"]))
    index = {"format": CACHE_FORMAT, "schema_version": CACHE_SCHEMA_VERSION, "k": int(k), "temperature": float(temperature),
             "key": key, "rows": sum(len(s["row_ids"]) for s in ordered),
             "bytes": sum(int(s["bytes"]) for s in ordered), "shards": list(ordered)}
    store.write_bytes(f"{prefix}/{SHARD_INDEX}", (json.dumps(index) + "\n").encode())
    return index
