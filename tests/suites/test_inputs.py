"""resolve_run_inputs on a user's store (the `tasks` suite): what it resolves, and the errors that name a bad input."""

from __future__ import annotations

import json

import pytest

from cl_platform.data.errors import TaskValidationError
from cl_platform.models.chameleon import modality_spec_of
from cl_platform.models.modality import ANOLE
from cl_platform.store import Store
from cl_platform.suites import RunRequest, available_suites, get_suite, register_suite, resolve_run_inputs
from cl_platform.suites.base import Suite
from tests.support.user_store import build_user_store


@pytest.fixture(scope="module")
def user(tmp_path_factory) -> dict:
    return build_user_store(tmp_path_factory.mktemp("user"))


def _request(user, **kw) -> RunRequest:
    base = dict(tasks=list(user["tasks"]), model=user["model"], kd_stream=user["kd_stream"])
    return RunRequest(**{**base, **kw})


def test_tasks_suite_resolves_a_users_store(user):
    store = Store(user["store"])
    inputs = resolve_run_inputs(store, _request(user, order=list(reversed(user["tasks"]))), log=lambda m: None)
    assert inputs.suite == "tasks"
    assert inputs.tasks == list(reversed(user["tasks"]))
    assert inputs.model_uri == store.uri(user["model"])
    assert inputs.spec == ANOLE  # recognised from the checkpoint's Chameleon vocabulary, no modality_spec needed
    assert inputs.kd_stream == user["kd_stream"]
    assert inputs.probe.params == {"stream": user["probe_stream"]}  # the importer's held-out <kd>-probe
    fields = inputs.sequence_fields()
    assert fields["probe"]["factory"] == "cl_platform.eval.likelihood:image_likelihood_probe"
    assert fields["spec"]["eos_id"] == 2


@pytest.mark.parametrize("change, error, match", [
    ({"model": None}, ValueError, "--model is required"),
    ({"order": ["scienceqa"]}, ValueError, "not a permutation"),
    ({"tasks": ["scienceqa", "nosuch"]}, TaskValidationError, "nosuch"),
    ({"kd_stream": "nosuch"}, ValueError, "KD stream 'nosuch'"),
    ({"probe_stream": "nosuch"}, ValueError, "probe stream 'nosuch'"),
    ({"suite": "nosuch"}, ValueError, "unknown suite 'nosuch'; known: digits, tasks"),
    ({"spec": "/nonexistent/spec.json"}, ValueError, "--spec /nonexistent/spec.json"),
    ({"model": "models/nosuch"}, ValueError, "cannot read its config.json"),
])
def test_bad_inputs_are_errors_that_name_them(user, change, error, match):
    with pytest.raises(error, match=match):
        resolve_run_inputs(Store(user["store"]), _request(user, **change), log=lambda m: None)


def test_no_probe_stream_means_no_probe_and_says_so(user):
    said = []
    inputs = resolve_run_inputs(Store(user["store"]), _request(user, kd_stream=None), log=said.append)
    assert inputs.probe is None and inputs.kd_stream is None
    assert any("--probe-stream" in m for m in said)


def test_a_spec_file_overrides_the_config(user, tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({**ANOLE.to_dict(), "eos_id": None}))
    inputs = resolve_run_inputs(Store(user["store"]), _request(user, spec=str(path)), log=lambda m: None)
    assert inputs.spec.eos_id is None and inputs.spec.spec_id == "anole"


def test_a_chameleon_config_with_another_layout_is_not_taken_for_anole(user):
    config = Store(user["store"]).read_json(f"{user['model']}/config.json")
    assert "modality_spec" not in config
    assert modality_spec_of(config) == ANOLE
    with pytest.raises(ValueError, match="boi_id"):
        modality_spec_of({**config, "vocabulary_map": {**config["vocabulary_map"], "<racm3:break>": 9}})
    with pytest.raises(ValueError, match="pass the spec explicitly"):
        modality_spec_of({"model_type": "llama", "vocab_size": 65536})


def test_a_registered_suite_resolves_through_the_same_path(user, monkeypatch):
    from cl_platform.suites import registry

    monkeypatch.setattr(registry, "_SUITES", dict(registry._SUITES))  # the registration ends with the test

    class Fixed(Suite):
        """A suite that always trains the user's first task on the user's model."""

        name = "fixed-test"
        default_tasks = (user["tasks"][0],)

        def resolve_model(self, store, request, log):
            return store.uri(user["model"]), ANOLE

        def resolve_tasks(self, store, request):
            return list(self.default_tasks)

        def resolve_kd_stream(self, store, request):
            return None

        def resolve_probe(self, store, request, spec, log):
            return None

    register_suite(Fixed)
    assert "fixed-test" in available_suites() and isinstance(get_suite("fixed-test"), Fixed)
    inputs = resolve_run_inputs(Store(user["store"]), RunRequest(suite="fixed-test"), log=lambda m: None)
    assert inputs.suite == "fixed-test" and inputs.tasks == [user["tasks"][0]]
    with pytest.raises(TypeError):
        register_suite(object)


def test_the_clip_probe_flags_belong_to_the_tasks_suite(tmp_path):
    from cl_platform.store import Store
    from cl_platform.suites import RunRequest, resolve_run_inputs

    with pytest.raises(ValueError, match="--clip-model/--vqgan choose the CLIP probe of the 'tasks' suite"):
        resolve_run_inputs(Store(f"file://{tmp_path}/s"), RunRequest(suite="digits", clip_model="clip", vqgan="vq"))
