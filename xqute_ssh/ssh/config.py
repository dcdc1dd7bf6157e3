"""HostConfig: everything needed to reach one SSH host, validated up front.

Bad input (a malformed ``host:port``, a port out of range, a non-positive
limit) is a :class:`~xqute_ssh.errors.ConfigError` raised when the config is
built, so a typo never surfaces later as a confusing network error.  The
password is kept out of every string we produce (``label``, ``repr``).
"""

from __future__ import annotations

import dataclasses
import getpass
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

#: ``known_hosts`` set to this turns host-key checking off, on purpose and
#: loudly (a warning on every connection).  A file cannot say None, and
#: ``false`` is refused, so nobody turns checking off by accident.
INSECURE_NO_HOST_KEY_CHECK = "INSECURE-NO-HOST-KEY-CHECK"

#: The default ``known_hosts``.  Left at this value, host keys are checked the
#: way OpenSSH does (``UserKnownHostsFile`` from the ssh config, else
#: ``~/.ssh/known_hosts`` and ``/etc/ssh/ssh_known_hosts``).
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"

_SPEC_RE = re.compile(
    r"""^(?:(?P<user>[^@\s:/]+)@)?          # optional user@
        (?:\[(?P<host6>[0-9A-Fa-f:.%]+)\]   # [ipv6]
          |(?P<host>[A-Za-z0-9_.\-]+))      # name or ipv4
        (?::(?P<port>[^:]*))?$              # optional :port
    """,
    re.VERBOSE,
)


def _check_port(port: Any, what: str) -> int:
    """Return ``port`` as an int in 1..65535 or raise ConfigError naming ``what``."""
    if isinstance(port, bool):
        raise ConfigError(f"{what}: port must be an integer, got {port!r}")
    try:
        value = int(port)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: port must be an integer, got {port!r}") from None
    if not 1 <= value <= 65535:
        raise ConfigError(f"{what}: port {value} is outside 1..65535")
    return value


@dataclass(frozen=True, repr=False)
class HostConfig:
    """How to reach one host and how hard to use it.

    Defaults follow OpenSSH where it has one: ``port=None`` and ``user=None``
    let ``~/.ssh/config`` (``Port``, ``User``, ``HostName``, ``IdentityFile``,
    ``ProxyJump``) decide, falling back to 22 and the local user name.
    ``known_hosts=None`` (or ``"INSECURE-NO-HOST-KEY-CHECK"``, which a file can
    say) turns host-key checking off (a warning is logged on every connect);
    a path is checked; anything else (``false``) is a ConfigError.  ``connect_options`` is handed
    to :func:`asyncssh.connect` unchanged and wins over what we derive.

    Limits: ``max_sessions`` channels per connection (keep it below the
    server's ``MaxSessions``, 10 by default; the control session counts as
    one), ``max_connections`` connections per host.
    """

    host: str
    port: int | None = None
    user: str | None = None
    keyfile: str | Sequence[str] | None = None
    password: str | None = None
    known_hosts: str | None = DEFAULT_KNOWN_HOSTS
    config: str | Sequence[str] | None = None
    proxy_jump: str | HostConfig | None = None
    max_sessions: int = 8
    max_connections: int = 4
    connect_timeout: float = 10.0
    keepalive_interval: float = 10.0
    keepalive_count_max: int = 3
    idle_timeout: float = 300.0
    acquire_timeout: float = 60.0
    command_timeout: float = 60.0
    connect_retries: int = 3
    connect_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        host = self.host
        if not isinstance(host, str) or not host.strip() or any(c.isspace() for c in host):
            raise ConfigError(f"invalid host {host!r}: must be a non-empty name or address")
        if host.startswith("-"):
            raise ConfigError(f"invalid host {host!r}: must not start with '-'")
        if self.port is not None:
            object.__setattr__(self, "port", _check_port(self.port, f"host {host!r}"))
        if self.known_hosts == INSECURE_NO_HOST_KEY_CHECK:
            object.__setattr__(self, "known_hosts", None)
        elif self.known_hosts is not None and not isinstance(self.known_hosts, str):
            raise ConfigError(
                f"{host}: known_hosts must be the path of a known_hosts file "
                f"(default {DEFAULT_KNOWN_HOSTS}), not {self.known_hosts!r}. Host keys "
                "are always checked; to turn checking off knowingly (anyone on the "
                "network path can then impersonate the host and read your jobs), "
                f"set known_hosts = \"{INSECURE_NO_HOST_KEY_CHECK}\""
            )
        for name in ("max_sessions", "max_connections", "keepalive_count_max"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{host}: {name} must be at least 1")
        if self.connect_retries < 0:
            raise ConfigError(f"{host}: connect_retries must be >= 0")
        for name in (
            "connect_timeout",
            "idle_timeout",
            "acquire_timeout",
            "command_timeout",
        ):
            if not float(getattr(self, name)) > 0:
                raise ConfigError(f"{host}: {name} must be > 0")
        if self.keepalive_interval < 0:
            raise ConfigError(f"{host}: keepalive_interval must be >= 0 (0 disables)")
        if self.proxy_jump is not None and not isinstance(self.proxy_jump, HostConfig | str):
            raise ConfigError(
                f"{host}: proxy_jump must be a 'user@host:port' string or a HostConfig"
            )

    # ------------------------------------------------------------ parsing
    @classmethod
    def from_spec(cls, spec: str, **kwargs: Any) -> HostConfig:
        """Build a config from ``[user@]host[:port]`` (IPv6 as ``[addr]:port``).

        Extra keyword arguments become the other fields; a user or port in
        the entry wins over ``user=``/``port=`` (the entry is more specific
        than defaults).  A malformed entry raises ConfigError naming it.
        """
        if not isinstance(spec, str):
            raise ConfigError(f"invalid host entry {spec!r}: expected '[user@]host[:port]'")
        m = _SPEC_RE.match(spec.strip())
        if m is None:
            raise ConfigError(f"invalid host entry {spec!r}: expected '[user@]host[:port]'")
        host = m.group("host6") or m.group("host")
        port: int | None = None
        if m.group("port") is not None:
            port = _check_port(m.group("port"), f"host entry {spec!r}")
        if m.group("user") is not None:
            kwargs["user"] = m.group("user")
        if port is not None:
            kwargs["port"] = port
        return cls(host=host, **kwargs)

    # ------------------------------------------------------------ derived
    @property
    def keyfiles(self) -> tuple[str, ...] | None:
        """``keyfile`` as a tuple, or None to let asyncssh pick (agent, defaults)."""
        if self.keyfile is None:
            return None
        if isinstance(self.keyfile, str):
            return (self.keyfile,)
        return tuple(self.keyfile)

    @property
    def config_files(self) -> tuple[str, ...] | None:
        """``config`` as a tuple, or None for asyncssh's default (~/.ssh/config)."""
        if self.config is None:
            return None
        if isinstance(self.config, str):
            return (self.config,)
        return tuple(self.config)

    @property
    def label(self) -> str:
        """``user@host:port`` for messages and reprs (never the password)."""
        user = self.user or _local_user()
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{user}@{host}:{self.port or 22}"

    @property
    def address(self) -> str:
        """``host:port`` for connection errors, where the user is irrelevant."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port or 22}"

    def jump_config(self) -> HostConfig | None:
        """The HostConfig of the jump host, or None without ``proxy_jump``.

        A string jump (``user@jump:port``, or a comma list ``a,b`` meaning
        through ``a`` then ``b``) inherits our key files, known_hosts, ssh
        config and timeouts, like OpenSSH's ProxyJump; never the password.
        """
        jump = self.proxy_jump
        if jump is None or isinstance(jump, HostConfig):
            return jump
        hops = [h.strip() for h in jump.split(",") if h.strip()]
        if not hops:
            raise ConfigError(f"{self.label}: empty proxy_jump {jump!r}")
        inherited: dict[str, Any] = {
            "keyfile": self.keyfile,
            "known_hosts": self.known_hosts,
            "config": self.config,
            "connect_timeout": self.connect_timeout,
            "keepalive_interval": self.keepalive_interval,
            "keepalive_count_max": self.keepalive_count_max,
        }
        if len(hops) > 1:
            inherited["proxy_jump"] = ",".join(hops[:-1])
        return HostConfig.from_spec(hops[-1], **inherited)

    def replace(self, **changes: Any) -> HostConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "password" and value is not None:
                parts.append("password='***'")
            elif f.name == "connect_options":
                opts = {k: ("***" if "pass" in k.lower() else v) for k, v in value.items()}
                parts.append(f"connect_options={opts!r}")
            else:
                parts.append(f"{f.name}={value!r}")
        return f"HostConfig({', '.join(parts)})"


def _local_user() -> str:
    """The local user name (what OpenSSH uses when none is configured)."""
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry, no env: rare in containers
        return "?"
