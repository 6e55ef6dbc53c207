"""Sweep files: the shipped ones parse; bad spaces fail with errors naming the file and the key."""

import copy
import os

import pytest

from cl_platform.sweeps.space import SweepConfigError, default_point, load_sweep, parse_sweep, sample_orders

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GOOD = {
    "name": "t",
    "suite": "digits",
    "tasks": ["parity", "name"],
    "orders": {"fixed": [["parity", "name"], ["name", "parity"]], "per_trial": "all"},
    "space": {
        "kd_weight": {"type": "loguniform", "low": 0.03, "high": 3.0},
        "num_experts": {"type": "choice", "values": [2, 4]},
        "r_text": {"type": "choice", "values": [4, 8]},
        "r_image": {"type": "choice", "values": [4, 8]},
        "lr": {"type": "loguniform", "low": 3e-4, "high": 3e-3},
    },
    "fixed": {"steps_per_task": 4},
    "search": {"num_samples": 3, "objectives": {"avg_accuracy": "max", "generation_drop": "min"}},
}


def bad(**changes):
    doc = copy.deepcopy(GOOD)
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        d = doc
        for p in parents:
            d = d[p]
        d[leaf] = value
    return doc


@pytest.mark.parametrize("path", ["sweeps/digits_quick.yaml", "sweeps/digits_full.yaml"])
def test_shipped_sweeps_parse(path):
    spec = load_sweep(os.path.join(ROOT, path))
    assert spec.search.num_samples >= 6
    assert {d.name for d in spec.space} >= {"kd_weight", "num_experts", "r_text", "r_image", "lr"}
    assert spec.param("kd_weight").type == "loguniform"
    assert spec.search.multi_objective and spec.search.metrics == ["avg_accuracy", "generation_drop"]
    for order in spec.orders.orders:
        assert sorted(order) == sorted(spec.tasks)


def test_good_spec_and_default_point():
    spec = parse_sweep(GOOD)
    assert spec.tasks == ("parity", "name") and len(spec.orders.orders) == 2
    from cl_platform.train.config import SequenceConfig

    assert default_point(spec) == {"kd_weight": 0.3, "num_experts": 4, "r_text": 8, "r_image": 8,
                                   "lr": SequenceConfig.lr}
    assert spec.to_dict()["space"]["num_experts"] == "choice(2, 4)"


@pytest.mark.parametrize("doc, where, words", [
    (bad(colour="red"), "colour", "unknown key 'colour'"),
    (bad(space__temperature={"type": "choice", "values": [1.0]}), "space.temperature", "unknown hyperparameter"),
    (bad(space__kd_weight={"type": "loguniform", "low": 0.1, "high": 1.0, "step": 2}), "space.kd_weight.step", "unknown key"),
    (bad(search__budget=3), "search.budget", "unknown key"),
    (bad(fixed__steps=3), "fixed.steps", "unknown setting"),
    (bad(num_experts=3), "num_experts", "unknown key"),
])
def test_unknown_keys_are_named(doc, where, words):
    with pytest.raises(SweepConfigError) as e:
        parse_sweep(doc, source="x.yaml")
    assert str(e.value).startswith(f"x.yaml: {where}:") and words in str(e.value)


@pytest.mark.parametrize("doc, where", [
    (bad(space__num_experts={"type": "choice", "values": []}), "space.num_experts.values"),
    (bad(space__r_text={"type": "choice"}), "space.r_text.values"),
    (bad(orders={"fixed": []}), "orders.fixed"),
    (bad(space={}), "space"),
])
def test_empty_choices_and_lists(doc, where):
    with pytest.raises(SweepConfigError, match=rf"^x\.yaml: {where}: .*(non-empty)"):
        parse_sweep(doc, source="x.yaml")


@pytest.mark.parametrize("doc, where, words", [
    (bad(space__r_text={"type": "choice", "values": [4, 0]}), "space.r_text.values", "r_text must be >= 1, got 0"),
    (bad(space__r_image={"type": "choice", "values": [-8]}), "space.r_image.values", "r_image must be >= 1, got -8"),
    (bad(space__num_experts={"type": "choice", "values": [2, 2.5]}), "space.num_experts.values",
     "num_experts must be an integer, got 2.5"),
    (bad(space__r_text={"type": "loguniform", "low": 1, "high": 8}), "space.r_text", "use {type: choice"),
    (bad(fixed__steps_per_task=0), "fixed.steps_per_task", "steps_per_task must be >= 1, got 0"),
    (bad(space__kd_weight={"type": "loguniform", "low": 0.0, "high": 1.0}), "space.kd_weight.low", "low > 0"),
    (bad(space__lr={"type": "loguniform", "low": 1e-2, "high": 1e-3}), "space.lr", "must be below high"),
])
def test_bad_values(doc, where, words):
    with pytest.raises(SweepConfigError) as e:
        parse_sweep(doc, source="x.yaml")
    assert str(e.value).startswith(f"x.yaml: {where}:") and words in str(e.value), str(e.value)


def test_fixed_rank_must_be_positive():
    doc = bad(fixed__r_image=0)
    del doc["space"]["r_image"]
    with pytest.raises(SweepConfigError, match=r"^x\.yaml: fixed\.r_image: r_image must be >= 1, got 0"):
        parse_sweep(doc, source="x.yaml")


def test_order_naming_an_unknown_task():
    doc = bad(orders={"fixed": [["parity", "name"], ["name", "colours"]]})
    with pytest.raises(SweepConfigError, match=r"orders\.fixed\[1\]: names unknown task 'colours'"):
        parse_sweep(doc, source="x.yaml")
    doc = bad(orders={"fixed": [["parity", "pair"]]})  # a suite task, but not one of `tasks`
    with pytest.raises(SweepConfigError, match=r"orders\.fixed\[0\]: names unknown task 'pair' \(tasks: parity, name\)"):
        parse_sweep(doc, source="x.yaml")
    with pytest.raises(SweepConfigError, match=r"tasks: names unknown task 'colours'; the suite has parity"):
        parse_sweep(bad(tasks=["parity", "colours"]), source="x.yaml")
    with pytest.raises(SweepConfigError, match=r"orders\.fixed\[0\]: misses 'name'"):
        parse_sweep(bad(orders={"fixed": [["parity"]]}), source="x.yaml")


def test_orders_sampled_with_a_seed():
    doc = bad(tasks=["parity", "name", "pair"], orders={"sample": 3, "seed": 7})
    a, b = parse_sweep(doc), parse_sweep(doc)
    assert a.orders.orders == b.orders.orders and len(set(a.orders.orders)) == 3
    assert sample_orders(["a", "b", "c"], 2, 1) == sample_orders(["a", "b", "c"], 2, 1)
    with pytest.raises(SweepConfigError, match="asks for 7 distinct orders but 3 tasks have only 6"):
        parse_sweep(bad(tasks=["parity", "name", "pair"], orders={"sample": 7}))
    with pytest.raises(SweepConfigError, match="exactly one of `fixed`"):
        parse_sweep(bad(orders={"sample": 1, "fixed": [["parity", "name"]]}))


def test_default_must_be_inside_the_space_when_included():
    doc = bad(space__r_text={"type": "choice", "values": [2, 4]})
    with pytest.raises(SweepConfigError, match=r"space\.r_text: search\.include_default needs the MoDE default r_text=8"):
        parse_sweep(doc)
    doc["search"]["include_default"] = False
    assert parse_sweep(doc).search.include_default is False


def test_other_errors():
    with pytest.raises(SweepConfigError, match="name: must match"):
        parse_sweep(bad(name="Bad Name"))
    with pytest.raises(SweepConfigError, match="fixed.lr: 'lr' is also in `space`"):
        parse_sweep(bad(fixed__lr=1e-3))
    with pytest.raises(SweepConfigError, match="unknown metric 'fid'"):
        parse_sweep(bad(search__objectives={"fid": "min"}))
    with pytest.raises(SweepConfigError, match="grace_period: 3 rounds is more than the 2 rounds"):
        parse_sweep(bad(search__scheduler={"type": "asha", "grace_period": 3}))
    with pytest.raises(SweepConfigError, match="method: unknown method 'nope'"):
        parse_sweep(bad(method="nope"))


def test_yaml_file_errors(tmp_path):
    with pytest.raises(SweepConfigError, match="no such sweep file"):
        load_sweep(tmp_path / "missing.yaml")
    p = tmp_path / "broken.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(SweepConfigError, match="not valid YAML"):
        load_sweep(p)
    p.write_text("- a list\n")
    with pytest.raises(SweepConfigError, match="a sweep file is a mapping"):
        load_sweep(p)


def test_resume_with_a_changed_sweep_file_is_refused():
    import json

    from cl_platform.sweeps.runner import SweepChangedError, _check_same_spec

    spec = parse_sweep(GOOD)
    recorded = json.loads(json.dumps(spec.to_dict()))
    _check_same_spec(parse_sweep(bad(description="edited")), recorded)  # text only: fine
    with pytest.raises(SweepChangedError, match=r"differs at: fixed, space"):
        _check_same_spec(parse_sweep(bad(fixed__steps_per_task=8, space__r_text={"type": "choice", "values": [8]})),
                         recorded)


def test_sweep_settings_are_the_config_fields():
    from cl_platform.fields import settings
    from cl_platform.methods import MethodConfig
    from cl_platform.sweeps.space import searchable, sweep_params
    from cl_platform.train.config import SequenceConfig

    assert searchable() == ["r_text", "r_image", "num_experts", "lora_alpha", "lora_dropout", "kd_weight",
                            "generation_routing",
                            "olora_lambda",
                            "lr", "weight_decay", "replay_fraction"]
    for cls, target in ((MethodConfig, "method"), (SequenceConfig, "training")):
        for name, s in settings(cls).items():
            if s.sweep:
                assert sweep_params()[name].target == target and sweep_params()[name].setting is s
            else:
                assert name not in sweep_params() or name == "seed" and target == "method"
    assert sweep_params()["seed"].target == "training"  # the run's seed (the method's follows it)
    assert not {"num_workers", "cpus_per_worker", "gpus_per_worker"} & set(sweep_params())  # under `resources`


#: A value its dataclass refuses, for every setting a sweep file may name.
REFUSED = {"r_text": 0, "r_image": 0, "num_experts": 0, "lora_alpha": 0.0, "lora_dropout": 1.0, "kd_weight": -1.0,
           "target_modules": [], "kd_temperature": 0.0, "kd_top_k": 0, "lr": 0.0, "weight_decay": -1.0,
           "steps_per_task": 0, "batch_size": 0, "kd_batch_size": 0, "warmup_frac": 1.0, "grad_clip": -1.0,
           "checkpoint_every": -1, "eval_batch_size": 0, "seed": -1, "log_every": 0, "max_failures": -1,
           "precision": "fp16", "gradient_checkpointing": 2, "teacher_mode": "gpu", "teacher_cache_limit_gb": -1.0,
           "generation_routing": "image",
           "gradient_diagnostic": 2,
           "olora_slots": 0, "olora_lambda": -0.5,
           "ranking_max_candidates": -1,
           "replay_fraction": 1.0, "replay_per_task": 0,
           "evaluate_earlier": 2,
           }


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_fixed_values_are_checked_by_the_fields_own_validation(name):
    from cl_platform.methods import MethodConfig
    from cl_platform.sweeps.space import sweep_params
    from cl_platform.train.config import SequenceConfig

    assert set(REFUSED) == set(sweep_params())
    value = REFUSED[name]
    doc = bad(**{f"fixed__{name}": value})
    doc["space"].pop(name, None)
    with pytest.raises(SweepConfigError) as e:
        parse_sweep(doc, source="x.yaml")
    problem = sweep_params()[name].setting.problem(value)
    assert str(e.value) == f"x.yaml: fixed.{name}: {name} {problem}"
    with pytest.raises(ValueError) as e:  # the same words from the dataclass itself
        if sweep_params()[name].target == "method":
            MethodConfig(**{name: value})
        else:
            SequenceConfig(run="r", store="s", method="mode", tasks=["a"], model_uri="m", spec={}, **{name: value})
    assert str(e.value).endswith(f".{name} {problem}")


@pytest.mark.parametrize("resources, where, words", [
    ({"num_workers": 0}, "resources.num_workers", "num_workers must be >= 1, got 0"),
    ({"cpus_per_worker": 0}, "resources.cpus_per_worker", "cpus_per_worker must be > 0, got 0"),
    ({"gpus_per_worker": -1}, "resources.gpus_per_worker", "gpus_per_worker must be >= 0, got -1"),
    ({"gpus_per_worker": None}, "resources.gpus_per_worker", "gpus_per_worker must be a number, got None"),
])
def test_resources_are_checked_like_the_sequence_fields(resources, where, words):
    with pytest.raises(SweepConfigError) as e:
        parse_sweep(bad(resources=resources), source="x.yaml")
    assert str(e.value) == f"x.yaml: {where}: {words}"
    r = parse_sweep(bad(resources={"num_workers": 2, "cpus_per_worker": 1, "gpus_per_worker": 1})).resources
    assert (r.num_workers, r.cpus_per_worker, r.gpus_per_worker) == (2, 1.0, 1.0)


def test_plan_sends_each_fixed_setting_to_its_dataclass():
    from types import SimpleNamespace

    from cl_platform.sweeps.runner import build_plan
    from cl_platform.sweeps.trial import sequence_config

    spec = parse_sweep(bad(fixed={"steps_per_task": 4, "kd_top_k": 16, "target_modules": ["q_proj"], "seed": 3,
                                  "warmup_frac": 0.2}))
    inputs = SimpleNamespace(store=SimpleNamespace(url="file:///s"), sequence_fields=lambda: {
        "model_uri": "m", "spec": {}, "kd_stream": None, "probe": None})
    plan = build_plan(spec, inputs, None)
    assert plan.method_config["kd_top_k"] == 16 and plan.method_config["target_modules"] == ["q_proj"]
    assert plan.method_config["seed"] == 3 and "steps_per_task" not in plan.method_config
    assert plan.sequence["steps_per_task"] == 4 and plan.sequence["warmup_frac"] == 0.2 and "kd_top_k" not in plan.sequence
    cfg = sequence_config(plan, {"num_experts": 2.0, "lr": 1e-3, "order": 0}, ["parity", "name"], "t-1")
    assert cfg.method_config["num_experts"] == 2 and isinstance(cfg.method_config["num_experts"], int)
    assert cfg.lr == 1e-3 and cfg.seed == 3


def test_a_sweep_can_search_the_replay_fraction():
    spec = parse_sweep(bad(space__replay_fraction={"type": "uniform", "low": 0.0, "high": 0.5}))
    assert spec.param("replay_fraction").describe() == "uniform(0, 0.5)"
    assert default_point(spec)["replay_fraction"] == 0.0  # the default trial replays nothing
    with pytest.raises(SweepConfigError, match="replay_fraction must be >= 0 and < 1, got 1.0"):
        parse_sweep(bad(space__replay_fraction={"type": "uniform", "low": 0.0, "high": 1.0}))
