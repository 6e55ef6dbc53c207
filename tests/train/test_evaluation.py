"""Evaluation of a lineage's earlier tasks: loaded only with ``evaluate_earlier``, scored apart from
the run's own tasks, each exactly as a run whose own task it is would score it."""

from __future__ import annotations

from dataclasses import replace

import pytest
from tests.support.sched_helpers import small_task

from cl_platform.models.tiny import TinyModelConfig, build_tiny_model
from cl_platform.store import Store
from cl_platform.suites.digits.vocab import DIGITS_SPEC
from cl_platform.train.config import SequenceConfig
from cl_platform.train.evaluation import evaluate, evaluate_earlier, load_eval_set


@pytest.fixture
def two_tasks(tmp_path):
    store = Store(str(tmp_path / "store"))
    small_task(store, "old", token=30)
    small_task(store, "new", token=34)
    cfg = SequenceConfig(run="r", store=store.url, method="mode", tasks=["new"], model_uri="m",
                         spec=DIGITS_SPEC.to_dict(), earlier_tasks=["old"], evaluate_earlier=1)
    return store, cfg


def test_earlier_tasks_are_scored_apart_and_as_their_own_run_would(two_tasks):
    store, cfg = two_tasks
    model = build_tiny_model(DIGITS_SPEC, TinyModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                          intermediate_size=32), seed=0).eval()
    es = load_eval_set(cfg, store, DIGITS_SPEC)
    assert es.tasks == ["new"] and es.earlier_tasks == ["old"] and set(es.rows) == {"new", "old"}
    accs = evaluate(model, es).accuracy
    assert len(accs) == 1  # the run's own tasks only
    earlier = evaluate_earlier(model, es)
    own = evaluate(model, load_eval_set(replace(cfg, tasks=["old"], earlier_tasks=None), store, DIGITS_SPEC)).accuracy
    assert earlier == {"old": own[0]}
    # without the setting nothing of the earlier tasks is read or scored
    off = load_eval_set(replace(cfg, evaluate_earlier=0), store, DIGITS_SPEC)
    assert off.earlier_tasks == [] and set(off.rows) == {"new"} and evaluate_earlier(model, off) == {}
