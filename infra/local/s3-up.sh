#!/usr/bin/env bash
# Start a local S3 endpoint (moto's server on 127.0.0.1) with one bucket, and write
# .s3_local/env: the AWS variables the platform reads plus CL_STORE=s3://<bucket>/<prefix>.
# Returns once the server answers. Stop it with infra/local/s3-down.sh (only that server).
#
# Overrides: S3_LOCAL_DIR, S3_LOCAL_PORT, S3_LOCAL_BUCKET, S3_LOCAL_PREFIX, VENV, S3_UP_TIMEOUT_S
# (see cl_platform/devstack/s3_server.py).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/venv.sh"
exec_up s3-up s3_server
