"""A user's store as a real Anole user would bring it, small enough for tests.

:func:`build_user_store` writes jsonl files in exactly the MoDE reference layout
(``<root>/data/ScienceQA/train_data.jsonl``, ``<root>/data/TextVQA/train_data.jsonl``,
``<root>/data/laion_data.jsonl``), imports them with
:func:`cl_platform.suites.mode_official.import_mode_official` (``data_root=``) and saves a tiny,
randomly initialised ``ChameleonForConditionalGeneration`` with Anole's vocabulary layout at
``models/anole-tiny/`` in the store. Its ``config.json`` has no ``modality_spec``, as a real
user's checkpoint has none: the spec is recognised from its ``vocabulary_map``.

The tasks are learnable and simple (token ids of Anole: BOS 0, EOS 2, separator 8710):

- ``scienceqa``: ``[0, prompt..., 8710, a, 2]`` with ``a = 9100 + (prompt[0] - 9000) % 4``;
- ``textvqa``: ``[0, prompt..., 8710, b, c, 2]`` with ``b = 9200 + prompt[-1] % 3`` and
  ``c = 9210 + prompt[-1] % 2``;

prompts are 4-8 text ids in 9000..9050 (Anole's text ids lie above its image codes 4..8195 and
the markers: an id like 3000 would be an image code). ``laion_data.jsonl`` holds whole
text-to-image sequences ``[0, prompt..., 8197, 16 image codes, 8196]`` (the reference has 1024
codes; 16 keep tests fast), the codes a function of the prompt's first id.
"""

from __future__ import annotations

import json
import pathlib
import random
import tempfile

#: The task folders, in the reference (CoIN) order, and their names in the store.
TASK_FOLDERS: tuple[str, ...] = ("ScienceQA", "TextVQA")
TASK_NAMES: tuple[str, ...] = ("scienceqa", "textvqa")
KD_STREAM = "laion_data"
PROBE_STREAM = "laion_data-probe"
MODEL_PATH = "models/anole-tiny"

#: Image codes per generation sequence (1024 in the reference data).
NUM_CODES = 16
TASK_LINES = 72
STREAM_LINES = 40

_BOS, _EOS, _SEP, _BOI, _EOI, _PAD = 0, 2, 8710, 8197, 8196, 1
_TEXT = 9000
_TEXT_IDS = (_TEXT, _TEXT + 51)  # [lo, hi) of prompt ids: text, not image codes


def _prompt(rng: random.Random, lo: int, hi: int) -> list[int]:
    return [rng.randrange(*_TEXT_IDS) for _ in range(rng.randint(lo, hi))]


def _scienceqa(rng: random.Random) -> list[int]:
    p = _prompt(rng, 4, 8)
    return [_BOS, *p, _SEP, _TEXT + 100 + (p[0] - _TEXT) % 4, _EOS]


def _textvqa(rng: random.Random) -> list[int]:
    p = _prompt(rng, 4, 8)
    return [_BOS, *p, _SEP, _TEXT + 200 + p[-1] % 3, _TEXT + 210 + p[-1] % 2, _EOS]


def _t2i(rng: random.Random) -> list[int]:
    p = _prompt(rng, 3, 6)
    codes = [4 + ((p[0] - _TEXT) * NUM_CODES + i) % 8192 for i in range(NUM_CODES)]
    return [_BOS, *p, _BOI, *codes, _EOI]


def write_reference_data(data_root: pathlib.Path, seed: int = 0) -> None:
    """Write the two task folders and ``laion_data.jsonl`` under ``data_root`` (reference layout)."""
    rng = random.Random(seed)
    for folder, make in zip(TASK_FOLDERS, (_scienceqa, _textvqa)):
        (data_root / folder).mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({"tokens": make(rng)}) for _ in range(TASK_LINES)]
        (data_root / folder / "train_data.jsonl").write_text("\n".join(lines) + "\n")
    lines = [json.dumps({"image_tokens": _t2i(rng)}) for _ in range(STREAM_LINES)]
    (data_root / "laion_data.jsonl").write_text("\n".join(lines) + "\n")


def anole_tiny_config():
    """A tiny ``ChameleonConfig`` with Anole's vocabulary (65536 ids, upstream names) and no ``modality_spec``."""
    from transformers import ChameleonConfig

    from cl_platform.models.chameleon import chameleon_image_token_name
    from cl_platform.models.tiny import TINY_VQ_CONFIG

    vmap = {chameleon_image_token_name(i - 4): i for i in range(4, 8196)}
    vmap.update({"<racm3:break>": _BOI, "<eoss>": _EOI, "<pad>": _PAD, "<s>": _BOS, "</s>": _EOS})
    return ChameleonConfig(
        vocab_size=65536,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        pad_token_id=_PAD,
        bos_token_id=_BOS,
        eos_token_id=_EOS,
        tie_word_embeddings=False,
        vq_config=dict(TINY_VQ_CONFIG),
        vocabulary_map=vmap,
    )


def build_user_store(root: pathlib.Path, store_url: str | None = None) -> dict:
    """Write the reference data under ``root/data``, import it and save a tiny Anole into the store.

    Args:
        root: a scratch directory (``tmp_path``).
        store_url: the store; ``file://<root>/store`` when ``None``.

    Returns:
        ``{"store": URL, "tasks": [task names, reference order], "kd_stream": name,
        "probe_stream": name, "model": store path of the model directory, "data_root": path}``.
    """
    import torch
    from transformers import ChameleonForConditionalGeneration

    from cl_platform.store import Store
    from cl_platform.suites.mode_official import import_mode_official

    root = pathlib.Path(root)
    data_root = root / "data"
    write_reference_data(data_root)
    store = Store(store_url if store_url is not None else f"file://{root}/store")
    report = import_mode_official(store, data_root=data_root)
    if not report.ok or sorted(s.name for s in report.sources) != sorted([*TASK_NAMES, KD_STREAM]):
        raise RuntimeError(f"the user store's import failed:\n{report.summary()}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ChameleonForConditionalGeneration(anole_tiny_config())
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        store.put_dir(tmp, MODEL_PATH)
    return {
        "store": store.url,
        "tasks": list(TASK_NAMES),
        "kd_stream": KD_STREAM,
        "probe_stream": PROBE_STREAM,
        "model": MODEL_PATH,
        "data_root": str(data_root),
    }


__all__ = ["build_user_store", "anole_tiny_config", "write_reference_data"]
