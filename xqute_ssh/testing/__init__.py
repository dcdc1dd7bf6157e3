"""Real OpenSSH servers for tests: a harness and its pytest fixtures.

``SshCluster`` starts sshd "hosts" on loopback (optionally each with a private
directory and its own network namespace); the pytest plugin
(``xqute_ssh.testing.pytest_plugin``, loaded automatically once the package is
installed) offers them as the fixtures ``sshd_cluster_factory``,
``sshd_cluster`` and ``sshd_host``.  See docs/testing.md.
"""

from .harness import (
    HarnessError,
    SshCluster,
    SshdHost,
    SshdStartError,
    SshdUnavailable,
    sshd_path,
)

__all__ = [
    "HarnessError",
    "SshCluster",
    "SshdHost",
    "SshdStartError",
    "SshdUnavailable",
    "sshd_path",
]
