#!/usr/bin/env bash
# Make (or reuse) a virtual environment in .venv and install xqute_ssh into it,
# editable, with its test tools (pytest, ruff, mypy, mkdocs, moto).
#
# A venv because Debian/Ubuntu's own Python refuses `pip install` outside one
# (PEP 668, "externally-managed-environment") and may lack pip altogether.
# On a fresh Debian/Ubuntu first: apt-get install python3-venv openssh-server
# Afterwards run the tools from the venv: .venv/bin/python -m pytest
# (or `. .venv/bin/activate` once).  VENV=DIR picks another place.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" || {
        echo "setup-tests.sh: could not make a venv; on Debian/Ubuntu: apt-get install python3-venv" >&2
        exit 1
    }
fi
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
"$venv/bin/python" -m pip install -q -e '.[test]'
echo "installed into $venv: run the tests with $venv/bin/python -m pytest"
