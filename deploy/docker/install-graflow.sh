#!/bin/sh
# Install Graflow into a virtualenv inside the worker image (run by the Dockerfile).
#
#   GRAFLOW_REQUIREMENTS="graflow-core[metrics]==0.3.0 graflow-redis[metrics]==0.3.0" \
#     sh install-graflow.sh /opt/graflow /tmp/graflow-wheels
#
# With wheels in the wheelhouse folder they are the only source (pip --no-index --find-links), so
# the build needs no network; with an empty folder pip uses the package index as usual. When the base
# image's Python has no pip (no ensurepip either), pip runs from the pip wheel in the wheelhouse.
set -eu
set -f  # requirements such as graflow-core[metrics] are not file patterns

venv=${1:?usage: install-graflow.sh VENV_DIR WHEELHOUSE_DIR (requirements in GRAFLOW_REQUIREMENTS)}
wheels=${2:?usage: install-graflow.sh VENV_DIR WHEELHOUSE_DIR (requirements in GRAFLOW_REQUIREMENTS)}
requirements=${GRAFLOW_REQUIREMENTS:-}
if [ -z "$requirements" ]; then
    echo "install-graflow.sh: GRAFLOW_REQUIREMENTS is empty; set it to what to install, e.g. 'graflow-redis[metrics]==0.3.0'" >&2
    exit 2
fi

if ! command -v python3 >/dev/null 2>&1; then
    echo "install-graflow.sh: the base image has no python3; use an image with Python >= 3.10 (e.g. python:3.11-slim)" >&2
    exit 1
fi

if python3 -c "import ensurepip" >/dev/null 2>&1; then
    python3 -m venv "$venv"
else
    python3 -m venv --without-pip "$venv"
fi
python="$venv/bin/python"

set +f
have_wheels=no
for wheel in "$wheels"/*.whl; do
    [ -e "$wheel" ] && have_wheels=yes
    break
done
pip_wheel=""
for wheel in "$wheels"/pip-*.whl; do
    [ -e "$wheel" ] && pip_wheel=$wheel
done
set -f

if "$python" -m pip --version >/dev/null 2>&1; then
    pip_cmd="$python -m pip"
elif [ -n "$pip_wheel" ]; then
    # A wheel is a zip archive pip can run from; it installs into the interpreter that runs it.
    pip_cmd="$python $pip_wheel/pip"
else
    echo "install-graflow.sh: the base image's Python has no pip and no ensurepip, and $wheels holds no pip wheel." >&2
    echo "  Use a base image with pip (python:3.11-slim) or build the wheelhouse with deploy/docker/wheelhouse.py, which adds one." >&2
    exit 1
fi

if [ "$have_wheels" = yes ]; then
    echo "install-graflow.sh: installing $requirements from the wheelhouse only (no package index)"
    # shellcheck disable=SC2086 # word splitting of the requirement list is intended
    $pip_cmd install --no-index --find-links "$wheels" $requirements
else
    echo "install-graflow.sh: installing $requirements from the package index"
    # shellcheck disable=SC2086
    $pip_cmd install $requirements
fi

# Fail the build, not the first deployment, when the command is missing or broken.
"$venv/bin/graflow" --version
"$venv/bin/graflow" worker --help >/dev/null
