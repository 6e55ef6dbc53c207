"""Adapter checkpoints: PEFT adapter weights (safetensors + adapter_config.json) and training state.

A round-end adapter is written to the store as ``<run>/<method>/round-XX/adapter/`` followed by a
``_COMPLETE`` marker, so a crash never leaves a directory that looks whole. Ray Train checkpoints
(for mid-round resume) hold the same adapter plus ``state.pt`` (optimizer, scheduler, position,
metrics so far).

Ray checkpoints live in the store (``runs/<run>/ray/``), which anyone who may write tasks can
write, and run names are predictable, so ``state.pt`` is data, never code: it holds only plain
dicts, lists, tuples, strings, numbers, ``None`` and tensors (checked when saved) and is read with
``torch.load(weights_only=True)``, which refuses anything else (a pickle that would import or
call code) with :class:`UnsafeCheckpointError`.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections import OrderedDict
from typing import Any, Optional

import torch
from peft import set_peft_model_state_dict
from safetensors.torch import load_file

from cl_platform.store import Store

ADAPTER_FILE = "adapter_model.safetensors"
STATE_FILE = "state.pt"
COMPLETE = "_COMPLETE"
#: The container and scalar types ``state.pt`` may hold besides tensors (all load under weights_only).
_PLAIN = (dict, OrderedDict, list, tuple, str, int, float, bool, type(None))


class UnsafeCheckpointError(ValueError):
    """A checkpoint's ``state.pt`` holds more than plain data and tensors: refused, never unpickled."""


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The PEFT model inside a DDP wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") and not hasattr(model, "peft_config") else model


def save_adapter_dir(model: torch.nn.Module, directory: str) -> None:
    """Write the adapter weights and config of a PEFT model to ``directory``."""
    peft_model = unwrap(model)
    os.makedirs(directory, exist_ok=True)
    peft_model.save_pretrained(directory)


def load_adapter_weights(model: torch.nn.Module, directory: str) -> None:
    """Load adapter weights saved by :func:`save_adapter_dir` into ``model`` (same method/config)."""
    peft_model = unwrap(model)
    path = os.path.join(directory, ADAPTER_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"adapter checkpoint {directory!r} has no {ADAPTER_FILE}")
    state = load_file(path)
    result = set_peft_model_state_dict(peft_model, state)
    unexpected = [k for k in result.unexpected_keys if "mode_" in k or "lora_" in k]
    if unexpected:
        raise ValueError(f"adapter checkpoint {directory!r} does not match the model: unexpected {unexpected[:3]}")


def save_round_adapter(store: Store, path: str, model: torch.nn.Module) -> str:
    """Upload the adapter to ``<path>/`` in the store, then write ``<path>/_COMPLETE``; return its URI."""
    with tempfile.TemporaryDirectory(prefix="cl_adapter_") as tmp:
        save_adapter_dir(model, tmp)
        store.put_dir(tmp, path)
    store.write_bytes(f"{path}/{COMPLETE}", b"")
    return store.uri(path)


def fetch_round_adapter(store: Store, path: str, local_dir: str) -> str:
    """Download a complete round adapter from the store; refuses an incomplete one."""
    if not store.exists(f"{path}/{COMPLETE}"):
        raise FileNotFoundError(f"adapter checkpoint {store.uri(path)!r} is incomplete (no {COMPLETE} marker)")
    store.get_dir(path, local_dir)
    return local_dir


def _check_plain(obj: Any, where: str) -> None:
    """Raise TypeError naming the first value under ``obj`` that is not plain data or a tensor."""
    if isinstance(obj, torch.Tensor):
        return
    if type(obj) not in _PLAIN:
        raise TypeError(f"training state {where}: a {type(obj).__module__}.{type(obj).__qualname__}; state.pt "
                        "holds only dicts, lists, tuples, strings, numbers, None and tensors (it is loaded "
                        "with torch.load(weights_only=True))")
    if isinstance(obj, dict):
        for k, v in obj.items():
            if type(k) not in (str, int):
                raise TypeError(f"training state {where}: key {k!r} is a {type(k).__name__}, not a str or int")
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")


def save_training_state(directory: str, model: torch.nn.Module, state: dict[str, Any]) -> None:
    """Adapter + ``state.pt`` into a local directory (for ``ray.train.Checkpoint.from_directory``).

    ``state`` (a :class:`~cl_platform.train.state.TrainState` dict with its optimizer and scheduler
    state dicts) must be plain data and tensors; anything else raises TypeError naming it.
    """
    _check_plain(state, "state")
    save_adapter_dir(model, directory)
    torch.save(state, os.path.join(directory, STATE_FILE))


def _restored_checkpoint() -> Optional[str]:
    """The storage path of the Ray Train fit's latest checkpoint (``None`` outside a worker or without one)."""
    try:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        return checkpoint.path if checkpoint is not None else None
    except Exception:  # noqa: BLE001 - only names the file in an error
        return None


def _load_failure(exc: BaseException) -> str:
    """The informative part of torch.load's error (its advice to retry with weights_only=False dropped)."""
    boilerplate = ("Weights only load failed", "Check the documentation", "In PyTorch 2.6")
    lines = [ln.strip().split("WeightsUnpickler error:")[-1].strip() for ln in str(exc).splitlines()]
    kept = [ln for ln in lines if ln and not ln.startswith(boilerplate)]
    return " ".join(kept) or type(exc).__name__


def load_training_state(directory: str, source: Optional[str] = None) -> Optional[dict[str, Any]]:
    """The ``state.pt`` dict of a checkpoint directory (``None`` without one), read as data only.

    Args:
        directory: the checkpoint's local directory.
        source: where the checkpoint came from, for the error (default: inside a Ray Train worker,
            the path of the fit's latest checkpoint, which is what a worker restores; else ``directory``).

    Raises:
        UnsafeCheckpointError: the file holds anything but plain data and tensors (a pickle that
            would run code is refused before any of it runs), or is not a torch file.
    """
    path = os.path.join(directory, STATE_FILE)
    if not os.path.isfile(path):
        return None
    name = f"{STATE_FILE} of checkpoint {source or _restored_checkpoint() or directory}"
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        reason = _load_failure(exc)
        raise UnsafeCheckpointError(
            f"refused to load {name}: not plain data and tensors (torch.load weights_only: {reason}). "
            "Nothing in it was run; a checkpoint in the store is data, never code. Remove the run's Ray "
            "checkpoints (runs/<run>/ray/ in the store) to resume from the ledger's last finished round") from None
    if not isinstance(state, dict):
        raise UnsafeCheckpointError(f"refused to load {name}: a {type(state).__name__}, not a training-state dict")
    return state


def round_path(cfg: Any, round_index: int) -> str:
    """Store path of a round's adapter: ``runs/<run>/<method>/round-XX``."""
    return f"runs/{cfg.run}/{cfg.method}/round-{round_index:02d}"


def store_path(store: Store, uri: str) -> str:
    """The store-relative path of a URI inside ``store``."""
    root = store.uri("").rstrip("/") + "/"
    if not uri.startswith(root):
        raise ValueError(f"checkpoint {uri!r} is not inside the store {store.url!r}")
    return uri[len(root):]
