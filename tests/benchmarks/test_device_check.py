"""``benchmarks/device_check.sh``: a fast, clear refusal without a GPU, and a CPU dry run at tiny
shapes whose JSON line has every figure the GPU check reports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "device_check.sh")


def _has_gpu() -> bool:
    exe = shutil.which("nvidia-smi")
    return bool(exe) and "GPU" in subprocess.run([exe, "-L"], capture_output=True, text=True).stdout


def _env(tmp_path) -> dict[str, str]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
           "AWS_EC2_METADATA_DISABLED": "true", "TMPDIR": str(tmp_path), "PYTHON": sys.executable}
    env.pop("RAY_ADDRESS", None)
    env.pop("CL_STORE", None)
    return env


@pytest.mark.skipif(_has_gpu(), reason="this machine has a GPU")
@pytest.mark.parametrize("command", [["bash", SCRIPT], [sys.executable, os.path.join(ROOT, "benchmarks", "device_check.py")]],
                         ids=["script", "python"])
def test_without_a_gpu_it_exits_2_at_once_saying_why(command, tmp_path):
    t0 = time.time()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=_env(tmp_path), timeout=60)
    seconds = time.time() - t0
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("no CUDA GPU: ") and "--dry-run" in proc.stderr
    assert proc.stdout == ""
    assert seconds < 10  # before torch, Ray or a model is loaded


@pytest.mark.slow
def test_the_dry_run_reports_every_figure():
    # a short TMPDIR: Ray's socket paths under it must stay within 107 bytes
    with tempfile.TemporaryDirectory(prefix="dc", dir="/tmp") as tmp:
        proc = subprocess.run(["bash", SCRIPT, "--dry-run"], capture_output=True, text=True, cwd=ROOT, env=_env(tmp),
                              timeout=400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["dry_run"] is True and result["errors"] == {}
    assert result["precision"] == "bf16" and result["gradient_checkpointing"] == 1
    layer = result["layer"]
    assert layer["dtype"] == "bfloat16" and (layer["d_in"], layer["d_out"]) == (64, 176)
    for key in ("lora_ms", "mode_ms", "reference_ms", "mode_layer_ms", "speedup_vs_reference"):
        assert layer[key] > 0
    assert result["model"]["vocab_size"] == 65536  # Anole's vocabulary layout at tiny width
    for mode in ("online", "cached"):
        direct = result["direct"][mode]
        assert direct["step_s"] > 0 and direct["tokens_per_s_per_gpu"] > 0
        assert direct["estimate_gib"] > 0 and direct["peak_allocated_gib"] is None  # no CUDA: no allocator peak
        run = result["sequence"][mode]
        assert run["rounds"] == 2 and run["step_s"] > 0 and run["tokens_per_s_per_gpu"] > 0
    assert result["direct"]["cached"]["cache_build_s"] > 0
    assert result["sequence"]["cached"]["cache_build_s"] > 0 and result["sequence"]["online"]["cache_build_s"] is None
    assert set(result["phase_s"]) == {"layer", "model_build", "model_save", "direct", "sequence"}
