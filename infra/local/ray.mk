# Local Ray head for `ray job submit` (include from the top Makefile: `include infra/local/ray.mk`).
#
#   make ray-up       start it: dashboard http://127.0.0.1:8265, the project's venv on PATH
#   make ray-status   show its addresses
#   make ray-down     stop it (only it: never `ray stop`, which kills every Ray on the machine)
#
# Then: RAY_ADDRESS=http://127.0.0.1:8265 ray job submit --working-dir . -- python jobs/sequence.py
# Overrides (environment or make variables): RAY_DASHBOARD_PORT, RAY_HEAD_PORT, RAY_LOCAL_DIR,
# RAY_NUM_CPUS, RAY_NUM_GPUS. State and Ray's logs live in .ray_local/ (git-ignored).

RAY_LOCAL_MK_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))

.PHONY: ray-up ray-down ray-status

ray-up: venv
	VENV=$(VENV) RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled $(RAY_LOCAL_MK_DIR)/ray-up.sh

ray-down:
	VENV=$(VENV) $(RAY_LOCAL_MK_DIR)/ray-down.sh

ray-status:
	$(or $(wildcard $(VENV)/bin/python),python3) -m cl_platform.devstack.ray_head status
