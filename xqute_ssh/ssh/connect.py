"""Opening one asyncssh connection: options, auth, host keys, errors.

Everything that can go wrong before a connection is usable is translated here
into one of our typed errors, each naming the host and what to do about it:

* unreachable / refused / no answer in time -> :class:`SshConnectError`
  (``host:port``; retryable unless the name does not resolve or the peer is
  not an SSH server)
* every auth method rejected -> :class:`SshAuthError` (``user@host`` and the
  methods we tried)
* host key unknown or changed -> :class:`SshHostKeyError` (which of the two,
  and the ``ssh-keyscan`` line that fixes it after checking the fingerprint)
* a key file that does not exist or cannot be read -> :class:`ConfigError`,
  before any network traffic.

Passwords are passed to asyncssh and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

import asyncssh

from ..errors import (
    ConfigError,
    SshAuthError,
    SshConnectError,
    SshConnectionLost,
    SshError,
    SshHostKeyError,
)
from .config import DEFAULT_KNOWN_HOSTS, HostConfig

logger = logging.getLogger("xqute_ssh.ssh")


@dataclass(eq=False)
class SshLink:
    """An open connection plus the jump connection it is tunnelled through.

    Closing the link closes both, innermost first, so a jump host connection
    never outlives the connection it carries.
    """

    conn: asyncssh.SSHClientConnection
    tunnel: SshLink | None = None

    def close(self) -> None:
        """Start closing the connection and its tunnel (returns at once)."""
        self.conn.close()
        if self.tunnel is not None:
            self.tunnel.close()

    @property
    def is_closed(self) -> bool:
        """True once the transport of the main connection has gone away."""
        return bool(self.conn.is_closed())

    async def wait_closed(self) -> None:
        """Wait until the connection (and tunnel) are fully closed."""
        await self.conn.wait_closed()
        if self.tunnel is not None:
            self.tunnel.close()
            await self.tunnel.wait_closed()


def connect_kwargs(cfg: HostConfig) -> dict[str, Any]:
    """The keyword arguments for :func:`asyncssh.connect` (no network, no await).

    Raises ConfigError for a key file or known_hosts file that does not
    exist, so the mistake is reported as such rather than as an auth failure.
    """
    kwargs: dict[str, Any] = {
        "host": cfg.host,
        "connect_timeout": cfg.connect_timeout,
        "keepalive_interval": cfg.keepalive_interval,
        "keepalive_count_max": cfg.keepalive_count_max,
    }
    if cfg.port is not None:
        kwargs["port"] = cfg.port
    if cfg.user is not None:
        kwargs["username"] = cfg.user
    keyfiles = cfg.keyfiles
    if keyfiles is not None:
        paths = [os.path.expanduser(k) for k in keyfiles]
        for path in paths:
            if not os.path.isfile(path):
                raise ConfigError(f"{cfg.label}: key file {path!r} does not exist")
        kwargs["client_keys"] = paths
    if cfg.password is not None:
        kwargs["password"] = cfg.password
    if cfg.known_hosts is None:
        kwargs["known_hosts"] = None
    elif cfg.known_hosts != DEFAULT_KNOWN_HOSTS:
        path = os.path.expanduser(cfg.known_hosts)
        if not os.path.isfile(path):
            raise ConfigError(f"{cfg.label}: known_hosts file {path!r} does not exist")
        kwargs["known_hosts"] = path
    # else: leave it to asyncssh, which honours UserKnownHostsFile like OpenSSH
    config_files = cfg.config_files
    if config_files is not None:
        kwargs["config"] = [os.path.expanduser(c) for c in config_files]
    kwargs.update(cfg.connect_options)
    return kwargs


async def open_link(cfg: HostConfig) -> SshLink:
    """Open one authenticated connection to ``cfg`` (through its jump host, if any).

    Raises SshConnectError, SshAuthError, SshHostKeyError or ConfigError.
    """
    kwargs = connect_kwargs(cfg)
    if cfg.known_hosts is None and "known_hosts" not in cfg.connect_options:
        logger.warning(
            "%s: host key checking is OFF (known_hosts=None); "
            "anyone on the network path can impersonate this host",
            cfg.label,
        )
    tunnel: SshLink | None = None
    jump = cfg.jump_config()
    if jump is not None:
        tunnel = await open_link(jump)
        kwargs["tunnel"] = tunnel.conn
    try:
        logger.debug("%s: connecting", cfg.label)
        conn = await asyncssh.connect(**kwargs)
    except BaseException as exc:
        if tunnel is not None:
            tunnel.close()
        if isinstance(exc, Exception):
            raise await translate_connect_error(cfg, exc) from exc
        raise
    logger.debug("%s: connected", cfg.label)
    return SshLink(conn, tunnel)


async def translate_connect_error(cfg: HostConfig, exc: BaseException) -> Exception:
    """Map an exception from :func:`asyncssh.connect` to one of ours."""
    if isinstance(exc, SshError | ConfigError):
        return exc
    addr = cfg.address
    if isinstance(exc, asyncssh.PermissionDenied):
        return SshAuthError(
            cfg.label,
            f"authentication failed (tried: {_methods_tried(cfg)}). Check the "
            "user name, that the public key is in ~/.ssh/authorized_keys on the "
            "server, or give keyfile=/password=. A passphrase-protected key "
            "is skipped unless it is in ssh-agent (ssh-add) or "
            "connect_options has its passphrase.",
        )
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return SshHostKeyError(cfg.label, await _host_key_message(cfg))
    if isinstance(exc, asyncssh.KeyImportError | asyncssh.KeyEncryptionError):
        hint = ""
        if "passphrase" in str(exc).lower():
            hint = (
                "; the key is passphrase-protected: load it into ssh-agent "
                "(ssh-add KEY) and leave keyfile unset, or give the passphrase "
                "as connect_options = {passphrase = \"...\"} (see docs/ssh.md)"
            )
        return ConfigError(f"{cfg.label}: cannot load a client key: {exc}{hint}")
    if isinstance(exc, asyncssh.ConnectionLost | ConnectionResetError | BrokenPipeError):
        # What sshd's MaxStartups does to excess unauthenticated connections,
        # and OpenSSH >= 9.8 to every connection from an address it penalises.
        err = SshConnectError(
            addr,
            f"connection dropped during the handshake ({exc}); the server may be "
            "limiting unauthenticated connections (OpenSSH MaxStartups) or refusing "
            "this address for a while after connections that never logged in, e.g. "
            "rejected host keys (OpenSSH >= 9.8 PerSourcePenalties: its log says "
            "'penalty')",
        )
        err.dropped = True
        return err
    if isinstance(exc, asyncssh.DisconnectError):
        err = SshConnectError(addr, f"SSH handshake failed: {exc.reason or exc}")
        err.retryable = False
        return err
    if isinstance(exc, TimeoutError):
        return SshConnectError(
            addr,
            f"no SSH answer within {cfg.connect_timeout:g}s (host down or firewalled?)",
        )
    if isinstance(exc, socket.gaierror):
        err = SshConnectError(addr, f"cannot resolve host name: {exc.strerror or exc}")
        err.retryable = False
        return err
    if isinstance(exc, ConnectionRefusedError):
        return SshConnectError(addr, "connection refused (is sshd running on that port?)")
    if isinstance(exc, OSError):
        return SshConnectError(addr, f"cannot connect: {exc.strerror or exc}")
    if isinstance(exc, ValueError):
        return ConfigError(f"{cfg.label}: invalid SSH option: {exc}")
    return SshConnectError(addr, f"cannot connect: {type(exc).__name__}: {exc}")


def _methods_tried(cfg: HostConfig) -> str:
    """Describe (without secrets) which authentication methods we offered."""
    methods = []
    keyfiles = cfg.keyfiles
    if keyfiles is not None:
        methods.append("publickey with " + ", ".join(keyfiles))
    else:
        agent = " and ssh-agent" if os.environ.get("SSH_AUTH_SOCK") else ""
        methods.append(f"publickey with the default keys (~/.ssh/id_*){agent}")
    if cfg.password is not None or "password" in cfg.connect_options:
        methods.append("password")
    return "; ".join(methods)


async def _host_key_message(cfg: HostConfig) -> str:
    """Say whether the host key is unknown or changed, and how to fix it."""
    files, has_entry = await asyncio.to_thread(_lookup_known_key, cfg)
    target = files[0]
    hostarg = f"-p {cfg.port} {cfg.host}" if cfg.port else cfg.host
    fix = (
        f"After checking the key's fingerprint "
        f"(ssh-keyscan {hostarg} | ssh-keygen -lf -), "
        f"add it with: ssh-keyscan {hostarg} >> {target}"
    )
    if has_entry:
        return (
            f"host key CHANGED: {target} has a different key for this host (the "
            "host was reinstalled, or someone is intercepting the connection). "
            f"Remove the old entry (ssh-keygen -R '{_known_hosts_name(cfg)}' -f "
            f"{target}) only if you know why it changed. " + fix
        )
    return f"host key unknown: not in {', '.join(files)}; refusing to trust it. " + fix


def _lookup_known_key(cfg: HostConfig) -> tuple[list[str], bool]:
    """The known_hosts files consulted, and whether any has a key for the host."""
    if cfg.known_hosts is None or cfg.known_hosts == DEFAULT_KNOWN_HOSTS:
        files = [os.path.expanduser(DEFAULT_KNOWN_HOSTS), "/etc/ssh/ssh_known_hosts"]
    else:
        files = [os.path.expanduser(cfg.known_hosts)]
    return files, _has_known_key(files, cfg.host, cfg.port)


def _known_hosts_name(cfg: HostConfig) -> str:
    """How OpenSSH writes this host in known_hosts."""
    return f"[{cfg.host}]:{cfg.port}" if cfg.port and cfg.port != 22 else cfg.host


def _has_known_key(files: list[str], host: str, port: int | None) -> bool:
    """True when one of ``files`` holds any key (or CA) for ``host``/``port``."""
    existing = [f for f in files if os.path.isfile(f)]
    if not existing:
        return False
    try:
        known = asyncssh.read_known_hosts(existing)
        result = known.match(host, host, port if port != 22 else None)
    except (OSError, ValueError):
        return False
    return bool(result[0] or result[1])


# --------------------------------------------------- errors after connecting
_LOST_TYPES: tuple[type[BaseException], ...] = (
    asyncssh.DisconnectError,
    asyncssh.ConnectionLost,
    BrokenPipeError,
    ConnectionResetError,
)


_CLOSED_REASON = "SSH connection closed"  # asyncssh's reason when the link is gone


def is_connection_lost(exc: BaseException) -> bool:
    """True for the exceptions asyncssh raises when the connection went away."""
    if isinstance(exc, asyncssh.ChannelOpenError):
        return exc.reason == _CLOSED_REASON
    return isinstance(exc, _LOST_TYPES)


def is_session_refused(exc: BaseException) -> bool:
    """True when the server refused a new channel (sshd's MaxSessions reached).

    OpenSSH answers "administratively prohibited" or, in recent versions,
    "open failed" (OPEN_CONNECT_FAILED) for a session channel over the limit.
    """
    if not isinstance(exc, asyncssh.ChannelOpenError):
        return False
    if exc.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED:
        return True
    return exc.code == asyncssh.OPEN_CONNECT_FAILED and exc.reason != _CLOSED_REASON


def lost_error(label: str, exc: BaseException, doing: str) -> SshConnectionLost:
    """An SshConnectionLost saying what we were doing when ``exc`` happened."""
    reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    return SshConnectionLost(label, f"connection lost while {doing}: {reason}")
