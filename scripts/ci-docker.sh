#!/usr/bin/env bash
# CI block: the container matrix (`python -m pytest -m docker`, docs/testing.md).
#
# Installs docker.io + debootstrap, starts dockerd with no bridge and no
# iptables rules (containers use the host network; sshd listens on 127.0.0.x),
# builds the test images (debootstrap tarballs cached in /var/cache/xqute-ssh,
# images rebuilt only when missing or their Dockerfile changed), runs the
# docker-marked tests, and stops the dockerd it started, whatever happens.
# With CI set, no docker test may skip: a missing dockerd fails them.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
log=${XQUTE_SSH_DOCKERD_LOG:-/tmp/xqute-ssh-dockerd.log}

if [ "$(id -u)" != 0 ]; then
    echo "ci-docker: must run as root (it installs packages and starts dockerd)" >&2
    exit 1
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    docker.io debootstrap >/dev/null

rules_before=$(iptables -S 2>/dev/null || true)
dockerd_pid=
stop_dockerd() {
    if [ -n "$dockerd_pid" ]; then
        kill "$dockerd_pid" 2>/dev/null || true
        wait "$dockerd_pid" 2>/dev/null || true
    fi
}
trap stop_dockerd EXIT

if docker version >/dev/null 2>&1; then
    echo "ci-docker: using the dockerd already running"
else
    dockerd --bridge=none --iptables=false --ip6tables=false >"$log" 2>&1 &
    dockerd_pid=$!
    for _ in $(seq 300); do
        docker version >/dev/null 2>&1 && break
        kill -0 "$dockerd_pid" 2>/dev/null || { tail -20 "$log" >&2; exit 1; }
        sleep 0.1
    done
    docker version >/dev/null || { tail -20 "$log" >&2; exit 1; }
fi
if [ "$(iptables -S 2>/dev/null || true)" != "$rules_before" ]; then
    echo "ci-docker: dockerd changed the iptables rules; refusing to go on" >&2
    exit 1
fi
echo "ci-docker: dockerd up at $((SECONDS - t0)) s"

python -m xqute_ssh.testing.images
echo "ci-docker: images ready at $((SECONDS - t0)) s"

set +e
python -m pytest -q -m docker -p no:cacheprovider
status=$?
set -e
echo "ci-docker: done in $((SECONDS - t0)) s (pytest exit $status)"
if [ "$status" = 5 ]; then
    echo "ci-docker: no docker test collected: failing" >&2
    exit 1
fi
exit "$status"
