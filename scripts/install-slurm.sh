#!/usr/bin/env bash
# Slurm and munge for the `slurm` tests (tests/slurm): Debian's slurm-wlm runs
# a one-node cluster as root (xqute_ssh/testing/slurm.py starts and stops it;
# nothing in /etc is configured or started here).  Called from .ci/run.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
    echo "install-slurm: not root; the slurm tests need root (they will say so)" >&2
    exit 0
fi
if command -v slurmctld >/dev/null && command -v munged >/dev/null; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
# The packages' own services are not used (the harness runs its own daemons).
for unit in slurmctld slurmd munge; do
    service "$unit" stop >/dev/null 2>&1 || true
done
