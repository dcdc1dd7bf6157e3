"""pytest fixtures with real sshd hosts (registered through the ``pytest11`` entry point).

- ``sshd_cluster_factory``: call ``factory(n=2, **SshCluster options)`` in a
  test; every cluster it made is stopped when the test ends.
- ``sshd_cluster``: two plain hosts.  ``sshd_host``: one.
- ``factory(n, container="openssh-bookworm")``: hosts in Docker containers
  (mark such tests ``@pytest.mark.docker``; ``pytest -m docker`` runs them).

Where sshd (or a feature asked for, such as ``netns``, or a running dockerd
for containers) is unavailable the test is skipped with the install hint;
when the ``CI`` environment variable is set it fails instead, because CI must
never silently skip the SSH tests.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import pytest

from xqute_ssh.testing.harness import SshCluster, SshdHost, SshdUnavailable, sshd_path


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "docker: runs SSH hosts in Docker containers; skipped (failed under CI) "
        "where dockerd is not running",
    )


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test, or fail it when running under CI (``CI`` set, non-empty)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: SSH tests may not be skipped)", pytrace=False)
    pytest.skip(reason)


def require_sshd() -> str:
    """Path of sshd, or skip/fail the calling test as :func:`skip_or_fail` does."""
    try:
        return sshd_path()
    except SshdUnavailable as exc:
        skip_or_fail(str(exc))


@pytest.fixture
def sshd_cluster_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., SshCluster]]:
    """A function that starts an :class:`SshCluster`; all are stopped at test end."""
    clusters: list[SshCluster] = []

    def factory(n: int = 2, **options: Any) -> SshCluster:
        if not options.get("container"):
            require_sshd()
        try:
            cluster = SshCluster(tmp_path_factory.mktemp("sshd"), n, **options)
            clusters.append(cluster)
            cluster.start()
        except SshdUnavailable as exc:
            skip_or_fail(str(exc))
        return cluster

    try:
        yield factory
    finally:
        for cluster in reversed(clusters):
            cluster.stop()


@pytest.fixture
def sshd_cluster(sshd_cluster_factory: Callable[..., SshCluster]) -> SshCluster:
    """Two plain sshd hosts on 127.0.0.2 and 127.0.0.3."""
    return sshd_cluster_factory(n=2)


@pytest.fixture
def sshd_host(sshd_cluster_factory: Callable[..., SshCluster]) -> SshdHost:
    """One plain sshd host."""
    return sshd_cluster_factory(n=1).hosts[0]
