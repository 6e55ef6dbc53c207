#!/usr/bin/env bash
# Start a local Ray head for `ray job submit`: dashboard and job API on 127.0.0.1:8265, the
# project's .venv/bin first on PATH (a job's `python` is the venv's), usage stats off, auth off.
# Records the head in .ray_local/head.json and returns once the dashboard answers.
# Stop it with infra/local/ray-down.sh (never `ray stop`: it kills every Ray on the machine).
#
# Overrides: RAY_LOCAL_DIR, RAY_DASHBOARD_PORT, RAY_HEAD_PORT, RAY_NUM_CPUS, RAY_NUM_GPUS, VENV,
# RAY_UP_TIMEOUT_S (see cl_platform/devstack/ray_head.py).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/venv.sh"
exec_up ray-up ray_head
