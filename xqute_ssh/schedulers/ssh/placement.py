"""Which host gets the next job: pure bookkeeping, no I/O.

A job goes to the host with the most free slots (its ``forks`` minus the jobs
it runs), not ``index % n``; hosts marked down are skipped until their
cool-down ends; a retried job prefers a host it has not failed on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field


@dataclass
class HostSlots:
    """One host's job slots and health, as the scheduler sees them."""

    name: str
    forks: int
    running: set[int] = field(default_factory=set)  # job indexes holding a slot
    down_until: float = 0.0
    last_error: str = ""
    finished: int = 0
    failed: int = 0
    placed: int = 0  # jobs ever given to this host: spreads ties evenly

    @property
    def free(self) -> int:
        return self.forks - len(self.running)

    def is_down(self, now: float) -> bool:
        return now < self.down_until

    def __repr__(self) -> str:
        state = " down" if self.is_down(time.monotonic()) else ""
        return f"<HostSlots {self.name} {len(self.running)}/{self.forks}{state}>"


class Placement:
    """Slot accounting across hosts."""

    def __init__(
        self,
        hosts: Iterable[HostSlots],
        cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hosts: dict[str, HostSlots] = {h.name: h for h in hosts}
        self.cooldown = cooldown
        self._clock = clock

    @property
    def capacity(self) -> int:
        return sum(h.forks for h in self.hosts.values())

    def pick(self, index: int, avoid: Collection[str] = ()) -> HostSlots | None:
        """Reserve a slot for job ``index``; None when no healthy host has one.

        Hosts in ``avoid`` (where this job already failed) are used only when
        no other host has a free slot.
        """
        now = self._clock()
        candidates = [
            h for h in self.hosts.values() if h.free > 0 and not h.is_down(now)
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

    def pick_down(self, index: int, avoid: Collection[str] = ()) -> HostSlots | None:
        """When no healthy host is left: a host in cool-down this job has not
        tried yet (the one that went down first), so a brief outage seen by
        other jobs does not fail this one untried."""
        candidates = [
            h for h in self.hosts.values() if h.free > 0 and h.name not in avoid
        ]
        if not candidates:
            return None
        best = min(candidates, key=lambda h: h.down_until)
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

    def mark_down(self, name: str, error: str) -> None:
        host = self.hosts[name]
        host.down_until = self._clock() + self.cooldown
        host.last_error = error

    def mark_up(self, name: str) -> None:
        host = self.hosts[name]
        host.down_until = 0.0
        host.last_error = ""

    def all_down(self) -> bool:
        now = self._clock()
        return all(h.is_down(now) for h in self.hosts.values())

    def __repr__(self) -> str:
        inner = ", ".join(repr(h) for h in self.hosts.values())
        return f"<Placement [{inner}]>"
