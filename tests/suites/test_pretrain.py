"""A short pre-training into a temporary store: files, card, reload, generation, reuse."""

import json

import pytest
import torch

pytestmark = pytest.mark.slow


def test_short_pretrain_writes_reloads_and_is_reused(tmp_path, capsys):
    from cl_platform.suites.digits.generation import ImageSampling, generate_images
    from cl_platform.models.chameleon import image_generation_allowed, load_model, modality_spec_of
    from cl_platform.models.tiny import TinyModelConfig
    from cl_platform.suites.digits import vocab as V
    from cl_platform.suites.digits.pretrain import PretrainConfig, card_summary, ensure_base_model

    from cl_platform.suites.digits.pretrain_cli import main

    store = tmp_path / "store"
    assert main(["--store", str(store), "--steps", "3", "--batch-size", "8", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "step     3/3" in out and "left 0:00" in out
    assert "held-out accuracy" in out and "trained file://" in out

    base_dir = store / "models" / "digits-base"
    card = json.loads((base_dir / "model_card.json").read_text())
    for key in ("parameters", "steps", "train_seconds", "threads", "metrics", "model_config"):
        assert key in card
    assert card["steps"] == 3 and card["threads"] == 1
    for key in ("heldout_understanding_accuracy", "generation_score", "judge_accuracy"):
        assert 0.0 <= card["metrics"][key] <= 1.0
    assert card["metrics"]["judge_accuracy"] >= 0.95
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (base_dir / "model" / name).is_file(), name
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(base_dir / "model")
    assert tok.encode("draw a seven", add_special_tokens=False) == V.encode_text("draw a seven")

    model = load_model(base_dir / "model")
    assert image_generation_allowed(model) and modality_spec_of(model) == V.DIGITS_SPEC
    images = generate_images(model, [3, 7], seed=0, sampling=ImageSampling(batch_size=2))
    assert images.shape == (2, 8, 8) and images.min() >= 0 and images.max() <= 16
    again = generate_images(model, [3, 7], seed=0, sampling=ImageSampling(batch_size=2))
    assert (images == again).all()

    mtime = (base_dir / "model" / "model.safetensors").stat().st_mtime_ns
    reused = ensure_base_model(str(store), PretrainConfig(steps=3, batch_size=8, threads=1), log=lambda s: None)
    assert reused.reused and reused.card == card
    assert (base_dir / "model" / "model.safetensors").stat().st_mtime_ns == mtime
    assert "understanding" in card_summary(reused.card)


def test_incomplete_model_is_not_reused(tmp_path):
    from cl_platform.suites.digits.pretrain import read_base_model

    (tmp_path / "models" / "digits-base" / "model").mkdir(parents=True)
    (tmp_path / "models" / "digits-base" / "model" / "config.json").write_text("{}")
    assert read_base_model(str(tmp_path)) is None
