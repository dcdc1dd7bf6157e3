"""The SSH backend: options, placement, remote snippets and the scheduler."""

from .options import ServerSpec, parse_servers
from .placement import HostSlots, Placement
from .scheduler import SshScheduler, parse_jid

__all__ = [
    "HostSlots",
    "Placement",
    "ServerSpec",
    "SshScheduler",
    "parse_jid",
    "parse_servers",
]
