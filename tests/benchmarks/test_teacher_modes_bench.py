"""``benchmarks/teacher_modes.py`` at a few rows, without Ray: every figure of its JSON line is there."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_teacher_modes_benchmark_small():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "teacher_modes.py"), "--rows", "12",
                           "--codes", "8", "--iters", "1", "--skip-ray"], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rows"] == 12 and result["cache_bytes"] > 0 and result["cache_direct_s"] > 0
    assert result["kd_step_cached_ms"] > 0 and result["kd_step_online_ms"] > 0
    assert 0 <= result["kd_loss_rel_diff_max"] < 2e-3  # float16 rounding of the cached log-probs only
    assert result["cache_ray"] == {}
