"""Which host gets the next job: pure bookkeeping, no I/O.

A job goes to the host with the most free slots (its ``forks`` minus the jobs
it runs), not ``index % n``, among the hosts the caller says may take jobs
(those :class:`~xqute_ssh.ssh.health.HostHealth` knows to answer); a retried
job prefers a host it has not failed on.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field


@dataclass
class HostSlots:
    """One host's job slots, as the scheduler sees them."""

    name: str
    forks: int
    running: set[int] = field(default_factory=set)  # job indexes holding a slot
    finished: int = 0
    failed: int = 0
    placed: int = 0  # jobs ever given to this host: spreads ties evenly

    @property
    def free(self) -> int:
        return self.forks - len(self.running)

    def __repr__(self) -> str:
        return f"<HostSlots {self.name} {len(self.running)}/{self.forks}>"


class Placement:
    """Slot accounting across hosts."""

    def __init__(self, hosts: Iterable[HostSlots]) -> None:
        self.hosts: dict[str, HostSlots] = {h.name: h for h in hosts}

    @property
    def capacity(self) -> int:
        return sum(h.forks for h in self.hosts.values())

    def pick(
        self,
        index: int,
        avoid: Collection[str] = (),
        among: Collection[str] | None = None,
    ) -> HostSlots | None:
        """Reserve a slot for job ``index`` on one of ``among`` (default: all).

        None when none of them has a free slot.  Hosts in ``avoid`` (where
        this job already failed) are used only when no other host has one.
        """
        candidates = [
            h
            for h in self.hosts.values()
            if h.free > 0 and (among is None or h.name in among)
        ]
        if not candidates:
            return None
        best = max(
            candidates,
            key=lambda h: (h.name not in avoid, h.free, -len(h.running), -h.placed),
        )
        best.running.add(index)
        best.placed += 1
        return best

    def hold(self, name: str, index: int) -> None:
        """Count a job found already running on ``name`` (re-attach)."""
        host = self.hosts.get(name)
        if host is not None:
            host.running.add(index)

    def release(self, name: str | None, index: int, ok: bool | None = None) -> None:
        host = self.hosts.get(name or "")
        if host is None or index not in host.running:
            return
        host.running.discard(index)
        if ok is True:
            host.finished += 1
        elif ok is False:
            host.failed += 1

    def __repr__(self) -> str:
        inner = ", ".join(repr(h) for h in self.hosts.values())
        return f"<Placement [{inner}]>"
