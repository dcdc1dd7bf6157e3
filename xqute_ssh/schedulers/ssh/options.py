"""Parse and check the SSH scheduler's ``servers`` before anything runs.

``servers`` is a mapping ``name -> options`` (without ``host`` the name is the
host) or a list of ``"[user@]host[:port]"`` strings.  Scheduler-level values
of the same keys are defaults for every server.  Anything unknown or
malformed is a ConfigError naming the entry.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ...errors import ConfigError, unknown_names
from ...ssh import HostConfig
from ...ssh.config import DEFAULT_KNOWN_HOSTS

#: Options that go straight into HostConfig (the connection's settings).
CONNECTION_KEYS = frozenset(
    {
        "host",
        "port",
        "user",
        "keyfile",
        "password",
        "known_hosts",
        "config",
        "proxy_jump",
        "max_sessions",
        "max_connections",
        "connect_timeout",
        "keepalive_interval",
        "keepalive_count_max",
        "idle_timeout",
        "acquire_timeout",
        "command_timeout",
        "connect_retries",
        "connect_options",
    }
)
#: Options about how jobs use the host.
JOB_KEYS = frozenset(
    {"forks", "mounted_workdir", "shared_fs", "remote_workdir", "keep_remote"}
)
SERVER_KEYS = CONNECTION_KEYS | JOB_KEYS

SharedFs = bool | Literal["auto"]


@dataclass(frozen=True)
class ServerSpec:
    """One server: how to reach it and how jobs use it."""

    name: str
    config: HostConfig
    forks: int | None
    mounted_workdir: str | None
    shared_fs: SharedFs
    remote_workdir: str | None = None
    keep_remote: bool = False

    def __repr__(self) -> str:
        return f"<ServerSpec {self.name} {self.config.label} forks={self.forks}>"


def _check_keys(where: str, options: Mapping[str, Any]) -> None:
    unknown = sorted(set(options) - SERVER_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown option(s) {unknown_names(unknown, SERVER_KEYS)}; "
            f"known: {', '.join(sorted(SERVER_KEYS))}"
        )


def _forks(where: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: forks must be a whole number >= 1, got {value!r}")
    return value


def _shared(where: str, value: Any) -> SharedFs:
    if value is True or value is False or value == "auto":
        return value
    raise ConfigError(
        f"{where}: shared_fs must be True, False or 'auto', got {value!r}"
    )


def _check_keyfiles(where: str, keyfiles: Sequence[str]) -> None:
    """A key file must exist and be private, as OpenSSH insists."""
    for keyfile in keyfiles:
        path = os.path.expanduser(keyfile)
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            raise ConfigError(
                f"{where}: key file {keyfile!r} cannot be read: {exc.strerror}"
            ) from None
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{where}: key file {keyfile!r} is not a file")
        if mode & 0o077:
            raise ConfigError(
                f"{where}: key file {keyfile!r} is readable by others "
                f"(mode {stat.S_IMODE(mode):04o}); OpenSSH refuses such keys: "
                f"chmod 600 {keyfile}"
            )


#: Scheduler-level options that are defaults for every server, as named
#: there (``forks_per_server`` is each server's ``forks``).
_DEFAULT_KEYS = CONNECTION_KEYS | {"shared_fs"}
SERVER_DEFAULT_OPTIONS = frozenset(_DEFAULT_KEYS | {"forks_per_server"})


def pop_server_defaults(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Take the scheduler-level options that are defaults for every server
    (connection options, ``shared_fs``, ``forks_per_server``) out of ``kwargs``.

    Both front ends (our ``SshScheduler`` and pipen's) accept them at the top
    level of ``scheduler_opts``; what is left belongs to the scheduler itself.
    """
    defaults = {k: kwargs.pop(k) for k in list(kwargs) if k in _DEFAULT_KEYS}
    if "forks_per_server" in kwargs:
        defaults["forks"] = kwargs.pop("forks_per_server")
    defaults.setdefault("known_hosts", DEFAULT_KNOWN_HOSTS)
    return defaults


def parse_servers(
    servers: Mapping[str, Mapping[str, Any] | None] | Sequence[str] | None,
    defaults: Mapping[str, Any],
) -> list[ServerSpec]:
    """Turn the user's ``servers`` (and scheduler-level defaults) into specs."""
    if not servers:
        raise ConfigError(
            "the ssh scheduler needs servers: scheduler_opts={'servers': "
            "['user@host', ...]} or {'name': {'host': ..., 'user': ...}}"
        )
    _check_keys("ssh scheduler options", defaults)
    entries: list[tuple[str, str | None, dict[str, Any]]] = []
    if isinstance(servers, str):
        raise ConfigError(
            f"servers must be a list or a mapping, not the string {servers!r}"
        )
    if isinstance(servers, Mapping):
        for name, opts in servers.items():
            if not isinstance(name, str) or not name.strip():
                raise ConfigError(f"server name {name!r} must be a non-empty string")
            if opts is not None and not isinstance(opts, Mapping):
                raise ConfigError(
                    f"server {name!r}: options must be a mapping, got {opts!r}"
                )
            entries.append((name, None, dict(opts or {})))
    else:
        for item in servers:
            if not isinstance(item, str):
                raise ConfigError(
                    f"server entry {item!r}: expected '[user@]host[:port]'"
                )
            entries.append((item, item, {}))
    specs: list[ServerSpec] = []
    seen: set[str] = set()
    for name, spec_string, opts in entries:
        where = f"server {name!r}"
        _check_keys(where, opts)
        merged = {**defaults, **opts}
        job_opts = {k: merged.pop(k) for k in JOB_KEYS if k in merged}
        try:
            if spec_string is not None:
                config = HostConfig.from_spec(spec_string, **merged)
            else:
                host = merged.pop("host", None) or name
                config = (
                    HostConfig.from_spec(host, **merged)
                    if ("@" in host or ":" in host)
                    else HostConfig(host=host, **merged)
                )
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        except TypeError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if name in seen:
            raise ConfigError(f"{where} is listed twice")
        _check_keyfiles(where, config.keyfiles or ())
        seen.add(name)
        mounted = job_opts.get("mounted_workdir")
        if mounted is not None and not isinstance(mounted, str):
            raise ConfigError(f"{where}: mounted_workdir must be a path string")
        remote_wd = job_opts.get("remote_workdir")
        if remote_wd is not None and (
            not isinstance(remote_wd, str) or not remote_wd.startswith(("/", "~/"))
        ):
            raise ConfigError(
                f"{where}: remote_workdir must be an absolute path (or start "
                f"with ~/), got {remote_wd!r}"
            )
        specs.append(
            ServerSpec(
                name=name,
                config=config,
                forks=_forks(where, job_opts.get("forks")),
                mounted_workdir=mounted,
                shared_fs=_shared(where, job_opts.get("shared_fs", "auto")),
                remote_workdir=remote_wd,
                keep_remote=bool(job_opts.get("keep_remote", False)),
            )
        )
    return specs
