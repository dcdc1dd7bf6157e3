#!/usr/bin/env bash
# Install xqute_ssh with its test tools and the pipen extra (the pipen
# scheduler tests in tests/pipen/ need it) into the current Python.
# (OpenSSH's sshd is needed for the SSH tests: apt-get install openssh-server.)
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --upgrade pip >/dev/null
python -m pip install -q -e '.[test,pipen]'
