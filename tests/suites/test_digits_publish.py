"""Writing the digits suite into a store (file:// and moto S3): content, idempotence, conflicts."""

from __future__ import annotations

import numpy as np
import pytest

from cl_platform.data import read_manifest, read_stream, read_task
from cl_platform.store import Store
from cl_platform.suites.digits import vocab as V
from cl_platform.suites.digits.publish import (
    JUDGE_FILE, JUDGE_JSON, LEGACY_JUDGE_PKL, SuiteConflictError, load_judge, read_suite_info, write_suite,
)
from cl_platform.suites.digits.tasks import TASK_ORDER, build_suite


@pytest.fixture(scope="module")
def suite0():
    return build_suite(0)


def test_write_then_skip(store_url, suite0, tmp_path):
    store = Store(store_url)
    lines: list[str] = []
    desc = write_suite(store, 0, suite=suite0, log=lines.append)
    assert len(lines) == 10 and all(line.startswith("write") for line in lines)
    for name in TASK_ORDER:
        task = read_task(store, name, vocab_size=V.VOCAB_SIZE, image_token_ranges=V.DIGITS_SPEC.image_token_ranges)
        assert task.spec_id == "digits-v1"
        assert task.train.select(["tokens", "answer_start"]).equals(suite0.tasks[name].train)
        assert task.eval.select(["prompt_tokens", "answer_tokens", "answer"]).equals(suite0.tasks[name].eval)
    for name in ("kd", "probe"):
        stream = read_stream(store, name, vocab_size=V.VOCAB_SIZE, image_token_ranges=V.DIGITS_SPEC.image_token_ranges)
        assert stream.data.num_rows == suite0.streams[name].num_rows
    info = read_suite_info(store)
    assert info == desc and info["task_order"] == list(TASK_ORDER) and info["judge"]["accuracy"] >= 0.95
    assert info["sizes"]["split"]["pretrain"] == 1247
    assert info["artifacts"]["judge"] == JUDGE_FILE == "suites/digits/judge.safetensors"
    assert not store.exists(LEGACY_JUDGE_PKL)
    assert store.read_json(JUDGE_JSON)["settings"]["gamma"] > 0
    judge = load_judge(store)
    images = V.decode_images(np.array([t[-67:-1] for t in suite0.streams["probe"].column("tokens").to_pylist()]))
    assert judge.score(images, suite0.streams["probe"].column("label").to_numpy()) >= 0.95

    from transformers import PreTrainedTokenizerFast

    store.get_dir("suites/digits/tokenizer", tmp_path / "tok")
    tok = PreTrainedTokenizerFast.from_pretrained(str(tmp_path / "tok"))
    assert tok("draw an eight")["input_ids"] == V.encode_text("draw an eight")

    lines.clear()
    assert write_suite(store, 0, suite=suite0, log=lines.append) == desc
    assert len(lines) == 10 and all(line.startswith("skip") for line in lines), lines


def test_conflicts_and_interrupted_writes(tmp_path, suite0):
    store = Store(f"file://{tmp_path}/store")
    write_suite(store, 0, suite=suite0, log=lambda _: None)
    created = read_manifest(store, "parity")["created"]
    # an interrupted write of one task (no _READY) is replaced, the rest is skipped
    store.delete("tasks/pair/_READY")
    lines: list[str] = []
    write_suite(store, 0, suite=suite0, log=lines.append)
    assert [line.split()[1] for line in lines if line.startswith("write")] == ["tasks/pair"]
    assert read_manifest(store, "parity")["created"] == created
    # another seed over seed 0 is refused, unless overwrite
    with pytest.raises(SuiteConflictError, match="overwrite"):
        write_suite(store, 1, log=lambda _: None)
    desc = write_suite(store, 1, overwrite=True, log=lambda _: None)
    assert desc["seed"] == 1 and read_manifest(store, "parity")["meta"]["seed"] == 1
    # a prefix gives separate names
    write_suite(store, 0, suite=suite0, prefix="digits-", overwrite=True, log=lambda _: None)
    assert read_suite_info(store)["task_order_names"] == [f"digits-{t}" for t in TASK_ORDER]
    assert read_task(store, "digits-name").train.num_rows == 1000


def test_cli(tmp_path, capsys):
    from cl_platform.suites.digits.__main__ import main

    assert main(["--store", str(tmp_path / "s"), "--json"]) == 0
    out = capsys.readouterr().out
    assert '"task_order_names"' in out and "write  tasks/pair" in out
    assert main(["--store", str(tmp_path / "s"), "--seed", "2"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_a_store_of_an_older_version_gets_the_new_judge(tmp_path, suite0):
    """An older store holds judge.pkl (and a judge.json about it): the pickle counts as absent, a
    safetensors judge is written next to it and suite.json points at that one."""
    store = Store(f"file://{tmp_path}/store")
    write_suite(store, 0, suite=suite0, log=lambda _: None)
    old_info = store.read_json(JUDGE_JSON)
    store.delete(JUDGE_FILE)
    store.write_bytes(LEGACY_JUDGE_PKL, b"\x80\x05not read")
    store.write_json(JUDGE_JSON, {"class": "DigitsJudge", "seed": 0, "sha256": "0" * 64, "report": old_info["report"]})
    with pytest.raises(FileNotFoundError, match="judge.pkl, a pickled judge of an older version, which is never loaded"):
        load_judge(store)
    lines: list[str] = []
    write_suite(store, 0, suite=suite0, log=lines.append)
    assert f"ignore {LEGACY_JUDGE_PKL} (a pickled judge of an older version: never loaded)" in lines
    assert any(line.startswith(f"write  {JUDGE_FILE}") for line in lines)
    assert store.read_json(JUDGE_JSON)["sha256"] == old_info["sha256"]  # the same judge as a fresh write
    assert read_suite_info(store)["artifacts"]["judge"] == JUDGE_FILE
    load_judge(store)
