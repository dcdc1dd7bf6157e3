"""The SSH backend: options, placement, remote snippets, the backend shared
by every scheduler that runs jobs on SSH hosts, and our scheduler."""

from .backend import JobRef, SshBackend, parse_jid
from .options import ServerSpec, parse_servers
from .placement import HostSlots, Placement
from .scheduler import SshScheduler

__all__ = [
    "HostSlots",
    "JobRef",
    "Placement",
    "ServerSpec",
    "SshBackend",
    "SshScheduler",
    "parse_jid",
    "parse_servers",
]
