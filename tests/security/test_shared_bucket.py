"""A bucket shared with other teams: what one writer puts there does not drive another's lineage.

A benchmark run writes its tasks into ``tasks/`` of the bucket it is pointed at; a production
lineage of another suite must not learn them. Task names, reasons and recorded settings that
``status`` prints come from the bucket, so they must not drive the terminal either.
"""

from __future__ import annotations

import json

from cl_platform.scheduler.config import LineageSettings
from cl_platform.scheduler.state import QuarantinedTask, StateStore
from cl_platform.scheduler.status import build_status, format_status
from cl_platform.store import Store
from cl_platform.suites.digits.vocab import DIGITS_SPEC
from tests.support.sched_helpers import Harness, small_task, state_json


def test_names_and_reasons_from_the_store_are_escaped(tmp_path):
    store = Store(f"file://{tmp_path}/store")
    evil = "\x1b]0;owned\x07\x1b[2J" + "x" * 300
    states = StateStore(store, "lin")
    state = states.load()
    state.quarantined[evil] = QuarantinedTask(task=evil, reason="bad\r\nname \x1b[31mred", at=1.0)
    states.save(state)
    store.write_json("lineages/lin/lineage.json", {"lineage": "lin", "settings": {"method": "\x1b[2J", "hook_command": 1}})

    status = build_status(store, "lin")
    text = format_status(status)

    assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    assert "\\x1b]0;owned\\x07" in text and "bad\\r\\nname" in text
    assert max(len(line) for line in text.splitlines()) < 500  # long names are cut
    assert status["settings"] is None  # an invalid record is not shown as settings
    assert "no settings recorded" in text


def test_a_task_a_builtin_suite_wrote_is_left_to_lineages_of_that_suite(tmp_path):
    """A benchmark run on a shared bucket writes its tasks into tasks/ (manifest meta.suite); a
    lineage of another suite quarantines them with the reason and learns the user's task."""

    store = Store(f"file://{tmp_path}/store")
    file_harness = Harness(store, tmp_path)
    small_task(store, "parity")
    m = store.read_json("tasks/parity/manifest.json")
    m["meta"] = {"suite": "digits"}
    store.write_json("tasks/parity/manifest.json", m)
    small_task(store, "mine", token=40)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(DIGITS_SPEC.to_dict()))
    settings = LineageSettings(suite="tasks", model="models/mine", spec=str(spec), retry_base_seconds=0.1)
    assert file_harness.scheduler(settings=settings).run() == 0
    state = state_json(store)
    assert "written by the 'digits' suite" in state["quarantined"]["parity"]["reason"]
    assert [t["task"] for t in state["learned"]] == ["mine"]
    # a lineage of the digits suite learns it
    other = Harness(store, tmp_path / "other", lineage="digits-lineage")
    assert other.scheduler().run() == 0
    assert "parity" in [t["task"] for t in state_json(store, "digits-lineage")["learned"]]
