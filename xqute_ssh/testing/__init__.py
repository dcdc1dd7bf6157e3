"""Real OpenSSH servers for tests: a harness and its pytest fixtures.

``SshCluster`` starts sshd "hosts" on loopback (optionally each with a private
directory and its own network namespace); the pytest plugin
(``xqute_ssh.testing.pytest_plugin``, loaded automatically once the package is
installed) offers them as the fixtures ``sshd_cluster_factory``,
``sshd_cluster`` and ``sshd_host``.  With ``container="openssh-bookworm"``
(or another image of :mod:`.images`) each host is an SSH server in its own
Docker container instead.  See docs/testing.md.
"""

from .harness import (
    ContainerHost,
    HarnessError,
    SshCluster,
    SshdHost,
    SshdStartError,
    SshdUnavailable,
    sshd_path,
)

__all__ = [
    "ContainerHost",
    "HarnessError",
    "SshCluster",
    "SshdHost",
    "SshdStartError",
    "SshdUnavailable",
    "sshd_path",
]
