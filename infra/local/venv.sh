# Sourced by ray-up.sh / ray-down.sh / s3-up.sh / s3-down.sh after they set $here (this dir):
# resolves the project's venv (VENV, relative to the repo root, default .venv) and runs a module of
# cl_platform.devstack with it (CL_REPO_DIR tells the module which checkout it serves).
repo="$(cd "$here/../.." && pwd)"
venv="${VENV:-.venv}"
case "$venv" in /*) ;; *) venv="$repo/$venv" ;; esac
export CL_REPO_DIR="$repo"

# exec_up NAME MODULE: `python -m cl_platform.devstack.MODULE up` with the venv's python (required),
# VENV exported.
exec_up() {
    if [ ! -x "$venv/bin/python" ]; then
        echo "$1: no Python at $venv/bin/python; create the venv first (make venv) or set VENV" >&2
        exit 1
    fi
    export VENV="$venv"
    exec "$venv/bin/python" -m "cl_platform.devstack.$2" up
}

# exec_down MODULE: `python -m cl_platform.devstack.MODULE down` with the venv's python, else any
# Python 3 with the checkout on PYTHONPATH (stopping needs neither Ray nor moto: standard library only).
exec_down() {
    py="$venv/bin/python"
    if [ ! -x "$py" ]; then
        py="$(command -v python3)"
        export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
    fi
    exec "$py" -m "cl_platform.devstack.$1" down
}
