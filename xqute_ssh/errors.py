"""One error root for the whole package, with typed families below it.

Users catch :class:`XquteError`; code that wants to react to one kind of
failure catches the family.  Every SSH error names the host it concerns and,
where there is one, what to do about it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class XquteError(Exception):
    """Root of every error raised on purpose by xqute_ssh.

    ``reported`` is True when it was already logged once for many jobs
    (every host down): callers need not log it again for each.
    """

    reported: bool = False


class ConfigError(XquteError, ValueError):
    """Bad input detected before anything runs (a ValueError too)."""


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice ``word`` was probably meant to be (a typo), if one is close."""
    match = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return match[0] if match else None


def unknown_names(names: Iterable[str], known: Iterable[str]) -> str:
    """``'pol_interval' (did you mean 'poll_interval'?), 'x'``: what a
    ConfigError about unknown options says, each with its closest known
    name when one is close (a typo is the usual cause)."""
    choices = sorted(known)
    parts = []
    for name in sorted(names):
        guess = closest(name, choices)
        parts.append(f"{name!r} (did you mean {guess!r}?)" if guess else repr(name))
    return ", ".join(parts)


class JobSubmissionError(XquteError):
    """A job could not be submitted; the job ends FAILED with this message."""


class WorkdirError(XquteError, OSError):
    """The workdir (or a job's metadir) cannot be created or written."""


# --------------------------------------------------------------------- SSH
class SshError(XquteError):
    """Something went wrong talking to one SSH host.

    Attributes:
        host: ``user@host:port`` (or as much of it as is known).
        retryable: True when the same operation may succeed on a new attempt
            (a lost connection, a timeout), False when it never will
            (authentication, host key).
    """

    retryable: bool = False

    def __init__(self, host: str, message: str) -> None:
        self.host = host
        super().__init__(f"{host}: {message}")


class SshConnectError(SshError):
    """The host is unreachable, refused the connection or did not answer in time.

    Attributes:
        dropped: the server closed the connection during the handshake, as
            sshd's ``MaxStartups`` does to excess unauthenticated connections:
            worth an immediate retry, unlike a refusal or a timeout (the host
            is down: its health is probed in the background instead).
    """

    retryable = True
    dropped = False


class SshAuthError(SshError):
    """The server rejected every authentication method we tried."""


class SshHostKeyError(SshError):
    """The server's host key is unknown or does not match known_hosts."""


class SshConnectionLost(SshError):
    """The connection (or the control session on it) dropped mid-operation."""

    retryable = True


class SshTimeoutError(SshError, TimeoutError):
    """An operation (or waiting for a free session) took longer than allowed."""

    retryable = True


class SshPoolClosed(SshError):
    """The pool was closed; no more operations are accepted."""


class RemoteCommandError(SshError):
    """A remote command that must succeed exited non-zero.

    Attributes:
        returncode: the command's exit status.
        stderr: what it wrote to stderr (already in the message, trimmed).
    """

    def __init__(
        self, host: str, message: str, returncode: int, stderr: str = ""
    ) -> None:
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(host, message)


class SftpUnavailable(SshError):
    """The host has no SFTP server (no ``Subsystem sftp``; Dropbear without
    OpenSSH's sftp-server), so files cannot be copied to or from it."""
