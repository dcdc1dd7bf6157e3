"""xqute_ssh: run batches of shell jobs on SSH hosts (or this machine).

Importing the package has no side effects: no event-loop policy, no signal
handlers, no plugins loaded.  One warnings filter is added: cryptography's
deprecation warnings raised inside asyncssh are ignored (see ``_warnings``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._warnings import quiet_asyncssh_crypto_warnings

quiet_asyncssh_crypto_warnings()

# The filter must be in place before anything imports asyncssh.
# ruff: noqa: E402
from .errors import (
    ConfigError,
    JobSubmissionError,
    SshAuthError,
    SshConnectError,
    SshConnectionLost,
    SshError,
    SshHostKeyError,
    SshTimeoutError,
    WorkdirError,
    XquteError,
)
from .job import Job
from .outcome import RunOutcome
from .path import SpecPath
from .plugin import plugin
from .scheduler import Scheduler
from .schedulers import available_schedulers, get_scheduler
from .schedulers.local import LocalScheduler
from .status import JobErrorStrategy, JobStatus
from .xqute import Xqute

if TYPE_CHECKING:  # pragma: no cover
    from .schedulers.ssh import SshScheduler

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "Job",
    "JobErrorStrategy",
    "JobStatus",
    "JobSubmissionError",
    "LocalScheduler",
    "RunOutcome",
    "Scheduler",
    "SpecPath",
    "SshAuthError",
    "SshConnectError",
    "SshConnectionLost",
    "SshError",
    "SshHostKeyError",
    "SshScheduler",
    "SshTimeoutError",
    "WorkdirError",
    "Xqute",
    "XquteError",
    "available_schedulers",
    "get_scheduler",
    "plugin",
]


def __getattr__(name: str) -> Any:
    # SshScheduler pulls in asyncssh: load it on first use only.
    if name == "SshScheduler":
        from .schedulers.ssh import SshScheduler

        return SshScheduler
    raise AttributeError(f"module 'xqute_ssh' has no attribute {name!r}")
