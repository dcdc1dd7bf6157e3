"""The SSH transport: pooled asyncssh connections and a fast control channel.

``HostPool(HostConfig(...))`` gives ``run`` (one round trip over a persistent
remote sh), ``exec`` (a fresh exec channel) and ``connection()`` (a raw
asyncssh connection with one channel slot reserved).  See docs/ssh-transport.md.
"""

from .config import DEFAULT_KNOWN_HOSTS, HostConfig
from .connect import SshLink, open_link
from .control import CommandResult, ControlSession
from .pool import HostPool
from .pool_state import PoolState, PoolStats

__all__ = [
    "DEFAULT_KNOWN_HOSTS",
    "CommandResult",
    "ControlSession",
    "HostConfig",
    "HostPool",
    "PoolState",
    "PoolStats",
    "SshLink",
    "open_link",
]
