#!/usr/bin/env bash
# Stop the local Ray head started by ray-up.sh, and only it: its recorded process group and
# their descendants (SIGTERM, then SIGKILL after RAY_DOWN_GRACE_S). Never runs `ray stop`.
# Honours the same RAY_LOCAL_DIR / VENV overrides as ray-up.sh.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/venv.sh"
exec_down ray_head
