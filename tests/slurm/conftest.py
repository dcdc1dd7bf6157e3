"""A one-node Slurm cluster and its login host, shared by the Slurm tests.

Started once per session (about a second); every test gets its own workdir.
Without Slurm the tests skip with the install hint; under CI they fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from xqute_ssh.testing import SshCluster, SshdHost, SshdUnavailable
from xqute_ssh.testing.pytest_plugin import require_sshd, skip_or_fail
from xqute_ssh.testing.slurm import SlurmCluster


@dataclass
class SlurmSite:
    """The cluster and the sshd host users log in to."""

    slurm: SlurmCluster
    login: SshdHost

    def opts(self, **extra: Any) -> dict[str, Any]:
        """scheduler_opts for the slurm scheduler on this site."""
        return {
            "login": self.login.spec_string,
            "keyfile": str(self.login.client_key),
            "known_hosts": str(self.login.known_hosts),
            "poll_interval": 0.2,
            "kill_grace": 1,
            **extra,
        }


@pytest.fixture(scope="session")
def slurm_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmSite]:
    require_sshd()
    try:
        slurm = SlurmCluster(tmp_path_factory.mktemp("slurm"), cpus=16)
    except SshdUnavailable as exc:
        skip_or_fail(str(exc))
    slurm.start()
    ssh = SshCluster(tmp_path_factory.mktemp("login"), 1, sshd_config=slurm.sshd_lines())
    try:
        ssh.start()
        yield SlurmSite(slurm, ssh.hosts[0])
    finally:
        ssh.stop()
        slurm.stop()


@pytest.fixture
def site(slurm_site: SlurmSite) -> Iterator[SlurmSite]:
    """The shared site; slurmctld is up again after each test."""
    yield slurm_site
    slurm_site.slurm.ensure_ctld()
