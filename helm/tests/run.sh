#!/usr/bin/env bash
# Tests of the Helm chart (helm/conveyor) and the container image contract (Dockerfile):
# real Helm (lint, render, client-side dry-run install), the Kubernetes JSON schemas of the
# oldest and newest supported versions, CRD models for KEDA and prometheus-operator.
#
#   helm/tests/run.sh            # every test
#   helm/tests/run.sh -k lint    # extra arguments go to pytest
#
# Needs Python >= 3.11 and PyPI (pip install into a venv, by default target/helm-venv;
# HELM_TEST_VENV moves it). No cluster, no helm binary, no Docker, no cargo.
set -euo pipefail
cd "$(dirname "$0")/../.."

venv="${HELM_TEST_VENV:-target/helm-venv}"
requirements=helm/tests/requirements.txt
python="${PYTHON:-python3}"

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "helm/tests: needs Python 3.11 or newer as \`$python\` (set PYTHON=…)" >&2
    exit 1
fi

stamp="$venv/.requirements"
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$requirements" "$stamp"; then
    echo "helm/tests: installing $requirements into $venv"
    rm -rf "$venv"
    if ! "$python" -m venv "$venv" 2>/dev/null; then
        # Debian's python3 keeps venv in a package of its own.
        if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
            DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv </dev/null
            rm -rf "$venv"
            "$python" -m venv "$venv"
        else
            echo "helm/tests: \`$python -m venv\` failed (on Debian: apt-get install python3-venv)" >&2
            exit 1
        fi
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: -r "$requirements"
    cp "$requirements" "$stamp"
fi

exec "$venv/bin/python" -m pytest -c helm/tests/pytest.ini helm/tests "$@"
