"""Test-suite configuration, kept minimal.

The sshd fixtures (``sshd_cluster_factory``, ``sshd_cluster``, ``sshd_host``)
come from the ``xqute_ssh.testing.pytest_plugin`` entry point; this only loads
the plugin by hand when the package is not installed (a bare checkout).
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("xqute_ssh"):
        config.pluginmanager.import_plugin("xqute_ssh.testing.pytest_plugin")
