"""Resource validation against a real (embedded) Ray cluster, ``init_ray`` and ``runtime_env_for_store``."""

from __future__ import annotations

import logging
import pickle

import pytest

ray = pytest.importorskip("ray")

from cl_platform.train.resources import (  # noqa: E402
    InsufficientResourcesError,
    init_ray,
    runtime_env_for_store,
    use_gpu_auto,
    validate_resources,
)


def test_per_node_fit_is_checked(monkeypatch):
    import cl_platform.train.resources as res

    two_nodes = res.ClusterCapacity(cpus=4, gpus=0, nodes=[(2, 0), (2, 0)])
    monkeypatch.setattr(res, "cluster_capacity", lambda: two_nodes)
    validate_resources(2, 2, 0)
    with pytest.raises(InsufficientResourcesError, match="only 0 such worker\\(s\\) fit .* must fit on one node"):
        validate_resources(1, 3, 0)


@pytest.mark.parametrize(
    "args, match",
    [((0, 1, 0), "num_workers"), ((1.5, 1, 0), "num_workers"), ((1, -1, 0), "cpus_per_worker"),
     ((1, 1, 1.5), "whole number"), ((1, float("nan"), 0), "cpus_per_worker")],
)
def test_bad_arguments_name_the_input(args, match):
    with pytest.raises(ValueError, match=match):
        validate_resources(*args)


def test_needs_ray_initialised():
    if ray.is_initialized():
        pytest.skip("Ray is initialised in this process")
    with pytest.raises(RuntimeError, match="init_ray"):
        validate_resources(1, 1, 0)


def test_http_address_is_explained(monkeypatch):
    if ray.is_initialized():
        pytest.skip("Ray is initialised in this process")
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    with pytest.raises(ValueError, match="dashboard .* ray job submit"):
        init_ray()


def test_runtime_env_for_store_forwards_aws_settings_for_s3_only(monkeypatch):
    from cl_platform.store import Store

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    env = runtime_env_for_store("s3://bucket/prefix")["env_vars"]
    assert "AWS_ACCESS_KEY_ID" not in env and env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"
    assert env["AWS_EC2_METADATA_DISABLED"] == "true"
    assert all(k.startswith("AWS_") for k in env)
    assert runtime_env_for_store(Store("s3://bucket/p"))["env_vars"] == env
    assert runtime_env_for_store("file:///tmp/x") == {}
    assert runtime_env_for_store("/tmp/x") == {}
    assert runtime_env_for_store(None) == {}


# Tests below share one embedded Ray (module-scoped; keep them last so the tests above run without it).


@pytest.fixture(scope="module")
def ray_2cpu():
    """An embedded 2-CPU Ray for this module (started through init_ray, shut down after)."""
    if ray.is_initialized():
        pytest.skip("Ray is already initialised in this process by another test")
    started = init_ray(num_cpus=2)
    assert started is True
    try:
        yield
    finally:
        ray.shutdown()


def test_too_many_workers_rejected_with_a_clear_message(ray_2cpu):
    with pytest.raises(InsufficientResourcesError) as info:
        validate_resources(8, 1, 0)
    assert str(info.value) == "asked for 8 workers x 1 CPU = 8 CPUs, the cluster has 2 CPUs; lower --workers or add nodes"
    assert (info.value.resource, info.value.asked, info.value.available) == ("CPU", 8, 2)
    assert isinstance(info.value, ValueError)
    again = pickle.loads(pickle.dumps(info.value))  # survives Ray's exception shipping
    assert again.resource == "CPU" and str(again) == str(info.value)


def test_extra_cpus_and_gpus_are_counted(ray_2cpu):
    cpu_msg = r"2 workers x 1 CPU \+ 0.5 CPUs besides the workers = 2.5 CPUs, the cluster has 2 CPUs"
    with pytest.raises(InsufficientResourcesError, match=cpu_msg):
        validate_resources(2, 1, 0, extra_cpus=0.5)
    gpu_msg = r"asked for 1 worker x 1 GPU = 1 GPU, the cluster has 0 GPUs; lower --workers or --gpus-per-worker"
    with pytest.raises(InsufficientResourcesError, match=gpu_msg):
        validate_resources(1, 1, 1)


def test_valid_requests_are_accepted(ray_2cpu):
    cap = validate_resources(2, 1, 0)
    assert cap.cpus == 2 and cap.gpus == 0 and len(cap.nodes) == 1
    validate_resources(1, 1, 0, extra_cpus=1)
    validate_resources(4, 0.5, 0)
    assert use_gpu_auto() is False
    assert init_ray() is False  # already initialised: nothing started


def test_embedded_ray_workers_silence_the_cleaner_poll(ray_2cpu):
    from cl_platform.train.ray_logging import QUIET_LOGGERS

    @ray.remote(num_cpus=0)
    def levels():
        import logging

        return [logging.getLogger(name).getEffectiveLevel() for name in QUIET_LOGGERS]

    assert ray.get(levels.remote()) == [logging.ERROR] * len(QUIET_LOGGERS)
