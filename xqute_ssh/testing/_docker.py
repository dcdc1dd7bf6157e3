"""The docker CLI, as the container backend uses it: find it, call it, explain failures."""

from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Sequence

from ._util import HarnessError, SshdUnavailable

DAEMON_HINT = (
    "start it (as root: dockerd --bridge=none --iptables=false &), "
    "or run the tests without -m docker"
)


class DockerError(HarnessError):
    """A docker command failed; the message ends with what docker said."""


@functools.cache
def docker_bin() -> str:
    path = shutil.which("docker")
    if path is None:
        raise SshdUnavailable("the docker CLI is not installed (apt-get install docker.io)")
    return path


def check_daemon() -> None:
    """Raise SshdUnavailable (skip, or fail under CI) unless dockerd answers."""
    _daemon_version()


@functools.cache  # a failure raises, so only a success is remembered
def _daemon_version() -> str:
    try:
        done = subprocess.run(
            [docker_bin(), "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        raise SshdUnavailable(f"dockerd does not answer within 30 s: {DAEMON_HINT}") from None
    if done.returncode != 0 or not done.stdout.strip():
        why = done.stderr.strip().splitlines()[-1:] or ["no answer"]
        raise SshdUnavailable(f"dockerd is not running ({why[0]}): {DAEMON_HINT}")
    return done.stdout.strip()


def docker(
    args: Sequence[str],
    *,
    check: bool = True,
    input: str | None = None,
    timeout: float | None = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``docker ARGS``; with ``check``, a non-zero exit raises DockerError."""
    argv = [docker_bin(), *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DockerError(f"docker {' '.join(args[:3])} ...: no answer in {timeout} s") from None
    if check and done.returncode != 0:
        raise DockerError(
            f"docker {' '.join(args[:3])} ... exited {done.returncode}: {done.stderr.strip()}"
        )
    return done
