# Local S3 endpoint for the production loop on one machine (include from the top Makefile:
# `include infra/local/s3.mk`).
#
#   make s3-up       start moto's S3 server on 127.0.0.1 with a bucket; writes .s3_local/env
#   make s3-status   show where it is
#   make s3-down     stop it (only it; the bucket lives in memory and goes with it)
#
# Then: . .s3_local/env   (AWS_ENDPOINT_URL, credentials, region, CL_STORE=s3://cl-local/cl)
# Overrides (environment or make variables): S3_LOCAL_PORT, S3_LOCAL_DIR, S3_LOCAL_BUCKET,
# S3_LOCAL_PREFIX. State, env file and the server's log live in .s3_local/ (git-ignored).

S3_LOCAL_MK_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))

.PHONY: s3-up s3-down s3-status

s3-up: venv
	VENV=$(VENV) $(S3_LOCAL_MK_DIR)/s3-up.sh

s3-down:
	VENV=$(VENV) $(S3_LOCAL_MK_DIR)/s3-down.sh

s3-status:
	$(or $(wildcard $(VENV)/bin/python),python3) -m cl_platform.devstack.s3_server status
