"""Adapter checkpoints: PEFT adapter weights (safetensors + adapter_config.json) and training state.

A round-end adapter is written to the store as ``<run>/<method>/round-XX/adapter/`` followed by a
``_COMPLETE`` marker, so a crash never leaves a directory that looks whole. Ray Train checkpoints
(for mid-round resume) hold the same adapter plus ``state.pt`` (optimizer, scheduler, position,
metrics so far).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Optional

import torch
from peft import set_peft_model_state_dict
from safetensors.torch import load_file

from cl_platform.store import Store

ADAPTER_FILE = "adapter_model.safetensors"
STATE_FILE = "state.pt"
COMPLETE = "_COMPLETE"


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


def save_training_state(directory: str, model: torch.nn.Module, state: dict[str, Any]) -> None:
    """Adapter + ``state.pt`` into a local directory (for ``ray.train.Checkpoint.from_directory``)."""
    save_adapter_dir(model, directory)
    torch.save(state, os.path.join(directory, STATE_FILE))


def load_training_state(directory: str) -> Optional[dict[str, Any]]:
    path = os.path.join(directory, STATE_FILE)
    return torch.load(path, weights_only=False) if os.path.isfile(path) else None


def round_path(cfg: Any, round_index: int) -> str:
    """Store path of a round's adapter: ``runs/<run>/<method>/round-XX``."""
    return f"runs/{cfg.run}/{cfg.method}/round-{round_index:02d}"


def store_path(store: Store, uri: str) -> str:
    """The store-relative path of a URI inside ``store``."""
    root = store.uri("").rstrip("/") + "/"
    if not uri.startswith(root):
        raise ValueError(f"checkpoint {uri!r} is not inside the store {store.url!r}")
    return uri[len(root):]
