"""Lineage settings: job_args are checked when the settings are made, by parsing them with the sequence
command's generated method/training/Ray arguments (never run); reserved flags stay reserved."""

from __future__ import annotations

import pytest

from cl_platform.scheduler.config import (
    RESERVED_JOB_FLAGS, LineageConfigError, LineageSettings, record_settings, settings_from_command_line,
)
from cl_platform.store import Store


@pytest.mark.parametrize("job_args", [
    [],
    ["--kd-weight", "0.5", "--workers", "2", "--gpus-per-worker", "1", "--cpus-per-worker", "8"],
    ["--target-modules", "q_proj,v_proj", "--lr=1e-3", "--threads-per-worker", "2", "--batch-size", "1"],
])
def test_good_job_args_are_kept(job_args):
    assert LineageSettings(job_args=job_args).job_args == job_args


@pytest.mark.parametrize("job_args, words", [
    (["--kd-weight", "-1"], "argument --kd-weight: must be >= 0, got -1.0"),
    (["--lr=abc"], "argument --lr: must be a number, got 'abc'"),
    (["--workers", "0"], "argument --workers: must be >= 1, got 0"),
    (["--target-modules", ","], "argument --target-modules: must be a non-empty list of names"),
    (["--kd-weight"], "argument --kd-weight: expected one argument"),
    (["--no-such-flag", "1"], "unrecognized arguments: --no-such-flag 1"),
    (["--kd-w", "0.5"], "unrecognized arguments: --kd-w 0.5"),  # no abbreviations
    (["0.5"], "unrecognized arguments: 0.5"),
])
def test_bad_job_args_are_refused_naming_the_setting(job_args, words):
    with pytest.raises(LineageConfigError) as e:
        LineageSettings(job_args=job_args)
    assert str(e.value).startswith(f"lineage setting job_args={job_args!r}: ") and words in str(e.value)


@pytest.mark.parametrize("flag", RESERVED_JOB_FLAGS)
def test_reserved_flags_stay_reserved(flag):
    with pytest.raises(LineageConfigError, match="are set by the scheduler"):
        LineageSettings(job_args=[flag, "x"])
    with pytest.raises(LineageConfigError, match="are set by the scheduler"):
        LineageSettings(job_args=[f"{flag}=x"])


def test_command_line_settings_are_checked_and_a_record_is_never_read_back(tmp_path):
    store = Store(f"file://{tmp_path}/store")
    with pytest.raises(LineageConfigError, match=r"job_args=\['--r-text', '0'\]: argument --r-text: must be >= 1"):
        settings_from_command_line({"job_args": ["--r-text", "0"]})
    settings = settings_from_command_line({"job_args": ["--r-text", "4"]})
    assert record_settings(store, "l", settings) == {}
    assert store.read_json("lineages/l/lineage.json")["settings"]["job_args"] == ["--r-text", "4"]
    # a record someone rewrote: reported as a difference, never parsed into settings
    store.write_json("lineages/l/lineage.json", {"lineage": "l", "settings": {"job_args": ["--r-txt", "4"], "x": 1}})
    diff = record_settings(store, "l", settings)
    assert diff == {"job_args": {"recorded": ["--r-txt", "4"], "in_force": ["--r-text", "4"]},
                    "x": {"recorded": 1, "in_force": None}}
    assert store.read_json("lineages/l/lineage.json")["settings"]["job_args"] == ["--r-text", "4"]
