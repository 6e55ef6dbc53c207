"""MethodConfig: every field documented and validated once; the sequence command's method flags come from it."""

from __future__ import annotations

import pytest

from cl_platform.cli.sequence import build_parser, parse_args
from cl_platform.fields import namespace_kwargs, settings
from cl_platform.methods import MethodConfig

#: One bad value per field (each must be refused with an error naming the field and the value).
BAD = {
    "r_text": 0,
    "r_image": -8,
    "num_experts": 0,
    "lora_alpha": 0.0,
    "lora_dropout": 1.0,
    "target_modules": [],
    "kd_weight": -0.1,
    "kd_temperature": 0.0,
    "kd_top_k": 0,
    "seed": -1,
    "generation_routing": "image",
    "olora_slots": 0,
    "olora_lambda": -0.5,
}

#: Further wrong kinds.
BAD_KINDS = [("r_text", 2.5), ("num_experts", True), ("lora_alpha", "16"), ("target_modules", "gate_proj"),
             ("target_modules", ["gate_proj", ""]), ("kd_weight", float("inf"))]


def test_every_field_is_documented_and_in_the_table():
    declared = settings(MethodConfig)
    assert list(declared) == [f for f in MethodConfig.__dataclass_fields__]
    assert all(s.help for s in declared.values())
    assert set(BAD) == set(declared)


@pytest.mark.parametrize("name, value", list(BAD.items()) + BAD_KINDS)
def test_a_bad_value_is_refused_naming_the_field(name, value):
    with pytest.raises(ValueError) as e:
        MethodConfig(**{name: value})
    assert f"MethodConfig.{name} must be" in str(e.value) and repr(value) in str(e.value)


def test_flags_default_to_the_dataclass_and_land_in_it():
    assert MethodConfig(**namespace_kwargs(MethodConfig, parse_args([]))) == MethodConfig()
    args = parse_args(["--target-modules", "a,b", "--r-text", "4", "--r-image", "2", "--num-experts", "2",
                       "--lora-alpha", "8", "--lora-dropout", "0", "--kd-weight", "0.5", "--kd-temperature", "1",
                       "--kd-top-k", "16"])
    mc = MethodConfig(**namespace_kwargs(MethodConfig, args))
    assert mc == MethodConfig(target_modules=["a", "b"], r_text=4, r_image=2, num_experts=2, lora_alpha=8.0,
                              lora_dropout=0.0, kd_weight=0.5, kd_temperature=1.0, kd_top_k=16)


def test_help_holds_each_fields_doc():
    text = " ".join(build_parser().format_help().split())
    for name, s in settings(MethodConfig).items():
        if s.cli:
            assert f"{s.flag} " in text and " ".join(s.help.split()) in text, name
    assert "--seed" in text  # the method's seed is the run's --seed


def test_bad_flag_values_are_refused_when_parsing(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--lora-dropout", "1.5"])
    assert "argument --lora-dropout: must be >= 0 and < 1, got 1.5" in capsys.readouterr().err
