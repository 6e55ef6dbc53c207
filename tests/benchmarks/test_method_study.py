"""``benchmarks/method_study.py``: the markdown and plot it builds from hand-made finished studies
(without replay, with replay, MoDE with sequence routing) written to a real store."""

from __future__ import annotations

import importlib.util
import json
import os

from cl_platform.store import Store
from cl_platform.sweeps import study as S
from cl_platform.sweeps.study_runner import write_study

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("method_study", os.path.join(ROOT, "benchmarks", "method_study.py"))
method_study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(method_study)

ORDERS = [["a", "b"], ["b", "a"]]


def study(name, per_cell, settings=None):
    """A study.json over 2 orders x 1 seed; ``per_cell`` maps order index -> method -> (acc, forgetting, drop)."""
    runs = [{"run": f"{name}-o{k}-s0", "order_index": k, "seed": 0, "order": ORDERS[k], "status": S.DONE,
             "metrics": {m: {"avg_accuracy": a, "avg_forgetting": f, "generation_drop": d}
                         for m, (a, f, d) in per_cell[k].items()}} for k in range(2)]
    methods = list(per_cell[0])
    return S.study_document(name, methods=methods, orders=ORDERS, seeds=[0], runs=runs, settings=settings or {})


def test_the_method_study_tables_claims_effects_and_plot(tmp_path, capsys):
    store = Store(str(tmp_path / "store"))
    plain = study("defaults", {0: {"mode": (0.20, 0.70, 0.01), "seq_lora": (0.10, 0.50, 0.80)},
                               1: {"mode": (0.30, 0.60, 0.03), "seq_lora": (0.10, 0.40, 0.70)}})
    replay = study("replay", {0: {"mode": (0.50, 0.30, 0.02), "seq_lora": (0.40, 0.20, 0.80)},
                              1: {"mode": (0.40, 0.40, 0.03), "seq_lora": (0.30, 0.20, 0.60)}})
    routing = study("seqrouting", {0: {"mode": (0.25, 0.70, 0.00)}, 1: {"mode": (0.30, 0.50, 0.01)}},
                    settings={"method_config": {"generation_routing": "sequence"}})
    for doc in (plain, replay, routing):
        write_study(store, f"studies/{doc['study']}", doc)
    image = tmp_path / "method_study.png"
    assert method_study.main(["--store", store.uri(""), "--image", str(image)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    text = "\n".join(out[:-1])
    assert summary["studies"] == ["defaults", "replay", "seqrouting"]
    # forgetting: seq_lora below mode in both runs of the plain study -> fails; generation holds everywhere
    assert summary["claims"]["defaults"]["forgetting/seq_lora"] == "does not hold (holds in 0 of 2 runs)"
    assert summary["claims"]["defaults"]["generation/seq_lora"] == "holds in every run (2 of 2)"
    assert "| mode | 2 | 25.0 ± 7.1 | 65.0 ± 7.1 |" in text  # acc 0.2, 0.3; forgetting 0.7, 0.6
    # replay minus plain, paired: mode acc +0.3 and +0.1 -> +20.0 ± 14.1; forgetting -0.4, -0.2
    assert "| mode | - | +20.0 ± 14.1 | - | -30.0 ± 14.1 | +0.5 ± 0.7 | - |" in text
    assert "### Generation routing: `sequence` against `token`" in text
    assert "| mode | - | +2.5 ± 3.5 | - | -5.0 ± 7.1 | -1.5 ± 0.7 | - |" in text
    for png in (image.read_bytes(), store.read_bytes("studies/method_study.png")):
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
