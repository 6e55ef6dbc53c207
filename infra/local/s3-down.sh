#!/usr/bin/env bash
# Stop the local S3 server started by s3-up.sh, and only it (its recorded pid, checked against its
# command line first); removes .s3_local/s3.json and .s3_local/env. moto keeps the bucket in
# memory, so its contents go with it. Honours the same S3_LOCAL_DIR / VENV overrides as s3-up.sh.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/venv.sh"
exec_down s3_server
