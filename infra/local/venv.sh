# Sourced by ray-up.sh / ray-down.sh / s3-up.sh / s3-down.sh after they set $here (this dir):
# resolves the project's venv (VENV, relative to the repo root, default .venv) and runs the helper.
repo="$(cd "$here/../.." && pwd)"
venv="${VENV:-.venv}"
case "$venv" in /*) ;; *) venv="$repo/$venv" ;; esac

# exec_up NAME SCRIPT: `SCRIPT up` with the venv's python (required), VENV exported.
exec_up() {
    if [ ! -x "$venv/bin/python" ]; then
        echo "$1: no Python at $venv/bin/python; create the venv first (make venv) or set VENV" >&2
        exit 1
    fi
    export VENV="$venv"
    exec "$venv/bin/python" "$here/$2" up
}

# exec_down SCRIPT: `SCRIPT down` with the venv's python, else any Python 3 (stopping needs
# neither Ray nor moto).
exec_down() {
    py="$venv/bin/python"
    [ -x "$py" ] || py="$(command -v python3)"
    exec "$py" "$here/$1" down
}
