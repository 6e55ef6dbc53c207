"""Writing the digits suite into a store (file:// and moto S3): content, idempotence, conflicts."""

from __future__ import annotations

import numpy as np
import pytest

from cl_platform.data import read_manifest, read_stream, read_task
from cl_platform.store import Store
from cl_platform.suites.digits import vocab as V
from cl_platform.suites.digits.publish import SuiteConflictError, load_judge, read_suite_info, write_suite
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
