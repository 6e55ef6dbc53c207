"""SequenceConfig: fields documented and validated once; the sequence command's training and Ray flags
come from it (old flag names kept, --quick); gpus_per_worker None resolves on the cluster."""

from __future__ import annotations

import argparse

import pytest

from cl_platform.cli import scheduler as scheduler_cli
from cl_platform.cli import sweep as sweep_cli
from cl_platform.cli.sequence import QUICK, build_parser, parse_args
from cl_platform.fields import namespace_kwargs, settings
from cl_platform.train.config import SequenceConfig, auto_gpus_per_worker

REQUIRED = {"run": "r", "store": "file:///s", "method": "mode", "tasks": ["a"], "model_uri": "m", "spec": {}}

#: One bad value per field (each must be refused with an error naming the field and the value).
BAD = {
    "run": 1, "store": None, "method": None, "tasks": [], "model_uri": 3, "spec": [], "method_config": "r_text=8",
    "kd_stream": 5, "teacher_cache": 5, "probe": "judge", "from_checkpoint": 7,
    "steps_per_task": 0, "batch_size": 0, "kd_batch_size": 0, "lr": 0.0, "warmup_frac": 1.0, "weight_decay": -0.1,
    "grad_clip": -1.0, "checkpoint_every": -1, "eval_batch_size": 0, "seed": -1, "log_every": 0,
    "num_workers": 0, "cpus_per_worker": 0.0, "gpus_per_worker": -1.0, "max_failures": -1, "cache_rows": -1,
    "torch_threads": -1, "precision": "fp16", "gradient_checkpointing": 2, "teacher_mode": "gpu",
    "teacher_cache_limit_gb": -1.0, "earlier_tasks": [],
    "gradient_diagnostic": 2,
    "ranking_max_candidates": -1,
    "evaluate_earlier": 2,
    "replay_fraction": 1.0, "replay_per_task": 0,
}

#: The flags kept from before the parser was generated: flag -> (field, value given, value parsed).
OLD_FLAGS = {
    "--steps": ("steps_per_task", "5", 5), "--batch-size": ("batch_size", "2", 2),
    "--kd-batch-size": ("kd_batch_size", "3", 3), "--lr": ("lr", "1e-3", 1e-3), "--seed": ("seed", "4", 4),
    "--checkpoint-every": ("checkpoint_every", "2", 2), "--workers": ("num_workers", "2", 2),
    "--cpus-per-worker": ("cpus_per_worker", "0.5", 0.5), "--gpus-per-worker": ("gpus_per_worker", "1", 1.0),
    "--threads-per-worker": ("torch_threads", "3", 3), "--cache-rows": ("cache_rows", "0", 0),
    "--max-failures": ("max_failures", "0", 0),
    "--precision": ("precision", "bf16", "bf16"), "--gradient-checkpointing": ("gradient_checkpointing", "1", 1),
}


def test_every_field_is_documented_and_in_the_table():
    declared = settings(SequenceConfig)
    assert list(declared) == list(SequenceConfig.__dataclass_fields__)
    assert all(s.help for s in declared.values())
    assert set(BAD) == set(declared)
    assert {s.group for s in declared.values() if s.cli} == {"training", "ray"}


@pytest.mark.parametrize("name, value", BAD.items())
def test_a_bad_value_is_refused_naming_the_field(name, value):
    with pytest.raises(ValueError) as e:
        SequenceConfig(**{**REQUIRED, name: value})
    assert f"SequenceConfig.{name} must be" in str(e.value) and repr(value) in str(e.value)


def test_dict_round_trip_and_auto_gpus():
    cfg = SequenceConfig(**REQUIRED)
    assert cfg.gpus_per_worker is None  # auto
    assert SequenceConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="SequenceConfig.lr must be > 0"):
        SequenceConfig.from_dict({**cfg.to_dict(), "lr": -1.0})


@pytest.mark.parametrize("resources, gpus", [
    ({}, 0.0), ({"CPU": 8.0}, 0.0), ({"CPU": 8.0, "GPU": 0.5}, 0.0), ({"CPU": 8.0, "GPU": 1.0}, 1.0),
    ({"GPU": 4.0}, 1.0),
])
def test_auto_gpus_per_worker(resources, gpus):
    assert auto_gpus_per_worker(resources) == gpus


def test_flags_default_to_the_dataclass():
    kwargs = namespace_kwargs(SequenceConfig, parse_args([]))
    assert set(kwargs) == {n for n, s in settings(SequenceConfig).items() if s.cli}
    assert SequenceConfig(**REQUIRED, **kwargs) == SequenceConfig(**REQUIRED)


@pytest.mark.parametrize("flag", OLD_FLAGS)
def test_old_flag_names_still_work(flag):
    name, given, parsed = OLD_FLAGS[flag]
    assert namespace_kwargs(SequenceConfig, parse_args([flag, given]))[name] == parsed


def test_quick_changes_defaults_but_not_given_flags():
    args = parse_args(["--quick"])
    assert (args.steps_per_task, args.log_every) == (QUICK["steps_per_task"], QUICK["log_every"])
    args = parse_args(["--quick", "--steps", "7", "--log-every", "1"])
    assert (args.steps_per_task, args.log_every) == (7, 1)
    assert parse_args([]).steps_per_task == SequenceConfig.steps_per_task


def test_help_holds_each_fields_doc():
    text = " ".join(build_parser().format_help().split())
    for name, s in settings(SequenceConfig).items():
        if s.cli:
            assert f"{s.flag} " in text and " ".join(s.help.split()) in text, name
    assert f"(default {SequenceConfig.steps_per_task}, {QUICK['steps_per_task']} with --quick)" in text


@pytest.mark.parametrize("argv, words", [
    (["--warmup-frac", "1"], "argument --warmup-frac: must be >= 0 and < 1, got 1.0"),
    (["--workers", "0"], "argument --workers: must be >= 1, got 0"),
    (["--gpus-per-worker", "-1"], "argument --gpus-per-worker: must be >= 0, got -1.0"),
    (["--mod", "x"], "unrecognized arguments: --mod"),  # no abbreviations: --mod is not --model
])
def test_bad_flags_are_refused_when_parsing(argv, words, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert words in capsys.readouterr().err


@pytest.mark.parametrize("build, argv", [
    (sweep_cli.build_parser, ["--config", "x.yaml", "--sto", "s"]),
    (scheduler_cli.build_parser, ["run", "--lineage", "l", "--mod", "m"]),
    (scheduler_cli.build_parser, ["status", "--lineage", "l", "--sto", "s"]),
])
def test_sweep_and_scheduler_parsers_take_no_abbreviations(build, argv, capsys):
    parser: argparse.ArgumentParser = build()
    with pytest.raises(SystemExit):
        parser.parse_args(argv)
    assert f"unrecognized arguments: {argv[-2]} {argv[-1]}" in capsys.readouterr().err


def test_precision_and_checkpointing_reach_lineage_job_args_and_sweeps():
    from cl_platform.scheduler.config import LineageConfigError, check_job_args
    from cl_platform.sweeps.space import sweep_params

    check_job_args(["--precision", "bf16", "--gradient-checkpointing", "1"])
    with pytest.raises(LineageConfigError, match="--gradient-checkpointing"):
        check_job_args(["--gradient-checkpointing", "2"])
    assert {"precision", "gradient_checkpointing"} <= set(sweep_params())
    assert not sweep_params()["precision"].searchable
    with pytest.raises(ValueError, match="SequenceConfig.precision must be one of fp32, bf16, got 'fp16'"):
        SequenceConfig(**REQUIRED, precision="fp16")
