#!/usr/bin/env bash
# xqute 2.2.1's own tests against xqute_ssh (see scripts/xqute_suite/run.py).
# Prints "xqute-suite: N passed, M failed"; exits 1 below 20 passed.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python scripts/xqute_suite/run.py "$@"
