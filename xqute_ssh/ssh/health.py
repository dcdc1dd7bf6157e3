"""HostHealth: which hosts may take jobs, and when to probe the others.

Pure bookkeeping (no ``await``, no I/O), like :class:`~.pool_state.PoolState`,
so every rule is tested without a network (tests/ssh/test_host_health.py).
The scheduler feeds it what the connection pools see and carries out the
probes it asks for.

A host's life::

    UNKNOWN --probe--> PROBING --ok--> UP --connect fails--> DOWN
                          |                                   |  ^
                          +--fails--> DOWN --probe due--> PROBING --fails
                                        (after cooldown * backoff**n, capped)
    any --auth / host key / unusable--> BROKEN (never probed again)

Only UP hosts get jobs: no job waits on a host that is not known to answer,
and a host that fails to connect is out of placement at once.  Returned
:class:`Change` objects say when a host went down or came back, once each, so
the caller logs one line per change, not one per job.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

#: Seconds from a host's failure to its first background probe.
HOST_COOLDOWN = 5.0
#: Each failed probe multiplies the wait before the next one by this.
PROBE_BACKOFF = 2.0
#: The wait between two probes never exceeds this many seconds.
PROBE_MAX_INTERVAL = 60.0


class HostState(enum.IntEnum):
    UNKNOWN = 0  # not tried yet
    PROBING = 1  # a probe is in flight
    UP = 2  # answers: takes jobs
    DOWN = 3  # failed; probed again at ``next_probe``
    BROKEN = 4  # failed in a way retrying cannot fix (auth, host key, no bash)


@dataclass(frozen=True)
class Change:
    """A host went down (``up`` False) or came back / up for the first time."""

    name: str
    up: bool
    reason: str = ""
    first: bool = False  # up: its first success; down: it never answered before
    permanent: bool = False


@dataclass
class HostRecord:
    name: str
    state: HostState = HostState.UNKNOWN
    reason: str = ""  # why it is down (empty while up)
    down_since: float | None = None  # set on the first failure, cleared when up
    next_probe: float | None = None  # DOWN hosts only
    failures: int = 0  # consecutive failed attempts since it was last up
    ever_up: bool = False

    @property
    def is_down(self) -> bool:
        """Failed and not back yet (a re-probe in flight counts as down)."""
        return self.down_since is not None


class HostHealth:
    """Up/down bookkeeping for a set of hosts; every method runs to completion."""

    def __init__(
        self,
        names: Iterable[str],
        *,
        cooldown: float = HOST_COOLDOWN,
        backoff: float = PROBE_BACKOFF,
        max_interval: float = PROBE_MAX_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        self.hosts: dict[str, HostRecord] = {n: HostRecord(n) for n in names}
        #: How messages name each host (default: its name).
        self.labels = dict(labels or {})
        self.cooldown = cooldown
        self.backoff = backoff
        self.max_interval = max_interval
        self.clock = clock

    # ------------------------------------------------------------ queries
    def state(self, name: str) -> HostState:
        return self.hosts[name].state

    def health_of(self, name: str) -> HostRecord:
        return self.hosts[name]

    def usable(self, name: str) -> bool:
        return self.hosts[name].state is HostState.UP

    def usable_names(self) -> set[str]:
        return {n for n, r in self.hosts.items() if r.state is HostState.UP}

    def down(self) -> list[HostRecord]:
        """Hosts that failed and are not back, in the order given."""
        return [r for r in self.hosts.values() if r.is_down]

    def pending(self) -> bool:
        """True while some host's first probe has not ended."""
        return any(
            r.state in (HostState.UNKNOWN, HostState.PROBING) and not r.is_down
            for r in self.hosts.values()
        )

    def delay(self, failures: int) -> float:
        """Seconds before the next probe after ``failures`` failures in a row."""
        return min(self.cooldown * self.backoff ** max(failures - 1, 0), self.max_interval)

    def next_probe_in(self) -> float | None:
        """Seconds until a probe is due (0: now); None if nothing will be probed."""
        now = self.clock()
        waits = [
            0.0 if r.state is HostState.UNKNOWN else max(0.0, (r.next_probe or now) - now)
            for r in self.hosts.values()
            if r.state in (HostState.UNKNOWN, HostState.DOWN)
        ]
        return min(waits) if waits else None

    def hopeless(self, give_up_after: float) -> str | None:
        """Why no job can run any more, or None while one still may.

        True when no host is up or still on its first probe, and each down
        host is broken, never answered in this run, or has been down for
        ``give_up_after`` seconds (a brief outage of every host, such as
        sshd restarting, is waited out).  The message names each host.
        """
        now = self.clock()
        for rec in self.hosts.values():
            if not rec.is_down:
                return None  # up, or first probe not over
            if rec.state is HostState.BROKEN or not rec.ever_up:
                continue
            assert rec.down_since is not None
            if now - rec.down_since < give_up_after:
                return None
        return "every host is down: " + "; ".join(
            f"{self.labels.get(r.name, r.name)}: {r.reason}" for r in self.hosts.values()
        )

    # ------------------------------------------------------------ probes
    def due_probes(self) -> list[str]:
        """Hosts to probe now; they become PROBING until the outcome is reported."""
        now = self.clock()
        due = [
            r
            for r in self.hosts.values()
            if r.state is HostState.UNKNOWN
            or (r.state is HostState.DOWN and r.next_probe is not None and r.next_probe <= now)
        ]
        for rec in due:
            rec.state = HostState.PROBING
            rec.next_probe = None
        return [r.name for r in due]

    # ------------------------------------------------------------ outcomes
    def succeeded(self, name: str) -> Change | None:
        """The host answered (a probe, or a connection for jobs)."""
        rec = self.hosts[name]
        if rec.state is HostState.BROKEN:
            return None  # a broken host stays out until the run ends
        if rec.state is HostState.UP:
            return None
        was_down, first = rec.is_down, not rec.ever_up
        rec.state = HostState.UP
        rec.reason = ""
        rec.down_since = rec.next_probe = None
        rec.failures = 0
        rec.ever_up = True
        if was_down or first:
            return Change(name, up=True, first=first)
        return None

    def failed(self, name: str, reason: str, *, permanent: bool = False) -> Change | None:
        """The host did not answer (or refused us for good with ``permanent``).

        Returns a Change only when the host was not already counted down: a
        failed re-probe just pushes the next probe further out.
        """
        rec = self.hosts[name]
        if rec.state is HostState.BROKEN:
            return None
        now = self.clock()
        newly = not rec.is_down
        rec.reason = reason
        if rec.down_since is None:
            rec.down_since = now
        if rec.state is HostState.DOWN and not permanent:
            # Reported by a job while already down: keep the probe schedule.
            return None
        rec.failures += 1
        if permanent:
            rec.state = HostState.BROKEN
            rec.next_probe = None
            return Change(name, up=False, reason=reason, first=not rec.ever_up, permanent=True)
        rec.state = HostState.DOWN
        rec.next_probe = now + self.delay(rec.failures)
        if newly:
            return Change(name, up=False, reason=reason, first=not rec.ever_up)
        return None

    def snapshot(self, wall_now: float) -> dict[str, dict[str, object]]:
        """Every host's state for the workdir's host file (``status`` reads
        it); ``down_since`` as a wall-clock time, given ``wall_now``."""
        now = self.clock()
        return {
            r.name: {
                "label": self.labels.get(r.name, r.name),
                "state": r.state.name.lower(),
                "reason": r.reason,
                "down_since": None
                if r.down_since is None
                else round(wall_now - (now - r.down_since), 3),
            }
            for r in self.hosts.values()
        }

    def __repr__(self) -> str:
        counts = {s: 0 for s in HostState}
        for rec in self.hosts.values():
            counts[rec.state] += 1
        inner = ", ".join(f"{n} {s.name.lower()}" for s, n in counts.items() if n)
        return f"<HostHealth [{inner}]>"
