"""PoolState: the connection pool's bookkeeping, without any I/O.

It decides who gets which connection, whether to open another connection or
start a control session, who is next in the queue, and which idle connections
to close.  It returns *actions* (:class:`OpenConnection`, :class:`StartControl`)
and never awaits, so every rule is tested without a network
(tests/ssh/test_pool_accounting.py); :class:`~xqute_ssh.ssh.pool.HostPool`
carries the actions out.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("xqute_ssh.ssh")

#: Requests in flight on every control session before the pool adds capacity.
PIPELINE_THRESHOLD = 32
#: After a failed connect while other connections work, wait this long before
#: trying to open another one (the failing host must not be hammered).
CONNECT_COOLDOWN = 5.0


class ConnState(enum.Enum):
    CONNECTING = "connecting"
    READY = "ready"


class ControlState(enum.Enum):
    NONE = "none"
    STARTING = "starting"
    READY = "ready"


class Want(enum.Enum):
    SESSION = "session"  # one channel slot (exec, connection())
    CONTROL = "control"  # one request on a control session (run)


@dataclass(eq=False)
class ConnSlot:
    """Bookkeeping for one connection; ``link``/``session`` are opaque I/O handles."""

    id: int
    capacity: int
    state: ConnState = ConnState.CONNECTING
    alive: bool = True
    leases: int = 0  # channel slots held by exec()/connection()
    control: ControlState = ControlState.NONE
    control_gen: int = 0  # bumped whenever the active control session changes
    control_load: int = 0  # run() requests granted to the active control session
    control_channels: int = 0  # control channels open: starting + active + retiring
    retiring: list[Any] = field(default_factory=list)
    wants_control: bool = False  # opened for run() load: start a control at once
    established: int = 0  # channels the server has accepted and not yet closed
    idle_since: float | None = None
    link: Any = None
    session: Any = None

    @property
    def sessions(self) -> int:
        """Channels in use or reserved on this connection."""
        return self.leases + self.control_channels

    def is_ready(self) -> bool:
        return self.alive and self.state is ConnState.READY

    def has_free_slot(self) -> bool:
        return self.is_ready() and self.sessions < self.capacity

    def is_idle(self) -> bool:
        """Nothing in use: a control session may exist, but has no work."""
        return (
            self.leases == 0
            and self.control_load == 0
            and not self.retiring
            and self.control is not ControlState.STARTING
        )

    def __repr__(self) -> str:
        return (
            f"<ConnSlot #{self.id} {self.state.value} sessions={self.sessions}/"
            f"{self.capacity} control={self.control.value}:{self.control_load}>"
        )


@dataclass(frozen=True, eq=False)
class Lease:
    """What a granted waiter holds; give it back with :meth:`PoolState.release`."""

    slot: ConnSlot
    want: Want
    gen: int = 0


@dataclass(eq=False)
class Waiter:
    want: Want
    future: asyncio.Future[Lease]


@dataclass(frozen=True)
class OpenConnection:
    """Action: connect, then call connection_ready / connection_failed."""

    slot: ConnSlot


@dataclass(frozen=True)
class StartControl:
    """Action: start a control session, then control_ready / control_failed."""

    slot: ConnSlot


Action = OpenConnection | StartControl


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of the pool's bookkeeping (what the repr shows, and more)."""

    connections: int  # open (ready) connections
    connecting: int  # being opened
    sessions: int  # channels in use or reserved, control sessions included
    capacity: int  # channel slots on open connections
    queued: int  # callers waiting for a slot or a control session
    leases: int  # slots held by exec()/connection()
    control_sessions: int  # ready control sessions
    control_load: int  # run() requests in flight
    closed: bool


class PoolState:
    """The pool's decisions, synchronous and side-effect free apart from futures.

    Every method runs to completion without awaiting, so no other task can
    observe a half-updated state.  Granting a waiter means setting its future's
    result; failing it means setting an exception.
    """

    def __init__(
        self,
        max_sessions: int,
        max_connections: int,
        *,
        pipeline_threshold: int = PIPELINE_THRESHOLD,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_sessions = max_sessions
        self.max_connections = max_connections
        self.pipeline_threshold = pipeline_threshold
        self.clock = clock
        self.slots: list[ConnSlot] = []
        self.waiters: deque[Waiter] = deque()
        self.closed = False
        self.cooldown_until = 0.0
        #: Channels per connection the server is known to accept (learned from
        #: a refusal); every connection to one sshd shares its MaxSessions.
        self.learned_sessions: int | None = None
        self._ids = 0

    # ---------------------------------------------------------- waiters
    def add_waiter(self, want: Want, future: asyncio.Future[Lease]) -> Waiter:
        waiter = Waiter(want, future)
        self.waiters.append(waiter)
        return waiter

    def try_grant(self, want: Want) -> Lease | None:
        """The fast path: grant at once if nobody is queued and no I/O is needed.

        Equivalent to queueing a waiter and calling :meth:`assign` when that
        would grant it straight away without asking for any action.
        """
        if self.closed or any(not w.future.done() for w in self.waiters):
            return None
        if want is Want.SESSION:
            slot = self._least(s for s in self.slots if s.has_free_slot())
            if slot is None:
                return None
            slot.leases += 1
            self._touch(slot)
            return Lease(slot, Want.SESSION)
        best = self._least_loaded_control()
        if best is None or best.control_load >= self.pipeline_threshold:
            return None
        best.control_load += 1
        self._touch(best)
        return Lease(best, Want.CONTROL, best.control_gen)

    def cancel_waiter(self, waiter: Waiter) -> None:
        """The waiter gave up (timeout, cancellation): never leak what it got."""
        with contextlib.suppress(ValueError):
            self.waiters.remove(waiter)
        fut = waiter.future
        if not fut.done():
            fut.cancel()
        elif not fut.cancelled() and fut.exception() is None:
            self.release(fut.result())

    def release(self, lease: Lease) -> None:
        """Give back a lease; harmless for a connection that is already gone."""
        slot = lease.slot
        if lease.want is Want.SESSION:
            slot.leases -= 1
        elif lease.gen == slot.control_gen:
            slot.control_load -= 1
        self._touch(slot)

    # ---------------------------------------------------------- the decision
    def assign(self) -> list[Action]:
        """Grant what can be granted, in FIFO order; return the I/O to start."""
        actions: list[Action] = []
        if self.closed:
            return actions
        remaining: deque[Waiter] = deque()
        need_connection = need_control = False
        no_free_slot = False  # once true for one waiter, true for all later ones
        starting = any(s.control is ControlState.STARTING for s in self.slots)
        connecting = any(s.state is ConnState.CONNECTING for s in self.slots)
        if not starting:  # a connection opened because run() was busy
            for fresh in self.slots:
                if fresh.wants_control and fresh.has_free_slot():
                    fresh.wants_control = False
                    if fresh.control is ControlState.NONE:
                        self._begin_control(fresh, actions)
                        starting = True
                        break
        for waiter in self.waiters:
            if waiter.future.done():  # cancelled while queued
                continue
            if waiter.want is Want.SESSION:
                slot = (
                    None
                    if no_free_slot
                    else self._least(s for s in self.slots if s.has_free_slot())
                )
                if slot is None:
                    no_free_slot = need_connection = True
                    remaining.append(waiter)
                    continue
                slot.leases += 1
                self._grant(waiter, Lease(slot, Want.SESSION))
                continue
            best = self._least_loaded_control()
            if best is not None and best.control_load < self.pipeline_threshold:
                self._grant_control(waiter, best)
                continue
            # Every control session is busy, or there is none: add one if we can
            # (one start at a time; a new connection if no connection has room)...
            if not starting:
                target = (
                    None
                    if no_free_slot
                    else self._least(
                        s
                        for s in self.slots
                        if s.has_free_slot() and s.control is ControlState.NONE
                    )
                )
                if target is not None:
                    self._begin_control(target, actions)
                    starting = True
                elif not connecting:
                    need_connection = need_control = True
            # ...and meanwhile pipeline on the least-loaded one, if there is one.
            if best is not None:
                self._grant_control(waiter, best)
            else:
                remaining.append(waiter)
        self.waiters = remaining
        if need_connection and self.may_open_connection():
            slot = ConnSlot(self._next_id(), self.max_sessions)
            if self.learned_sessions is not None:
                slot.capacity = min(slot.capacity, self.learned_sessions)
            slot.wants_control = need_control
            self.slots.append(slot)
            actions.append(OpenConnection(slot))
        return actions

    def _begin_control(self, slot: ConnSlot, actions: list[Action]) -> None:
        slot.control = ControlState.STARTING
        slot.control_channels += 1
        self._touch(slot)
        actions.append(StartControl(slot))

    def may_open_connection(self) -> bool:
        return (
            not self.closed
            and len(self.slots) < self.max_connections
            and not any(s.state is ConnState.CONNECTING for s in self.slots)
            and self.clock() >= self.cooldown_until
        )

    # ---------------------------------------------------------- outcomes of I/O
    def connection_ready(self, slot: ConnSlot, link: Any) -> None:
        slot.link = link
        slot.state = ConnState.READY
        self._touch(slot)

    def connection_failed(self, slot: ConnSlot, exc: BaseException) -> None:
        """A connect failed for good: with nothing else open, fail the queue."""
        self._drop(slot)
        if any(s.is_ready() for s in self.slots):
            self.cooldown_until = self.clock() + CONNECT_COOLDOWN
        else:
            self._fail_waiters(exc, lambda w: True)

    def connection_lost(self, slot: ConnSlot) -> None:
        """The connection went away: forget it (its leases become no-ops)."""
        self._drop(slot)

    def control_ready(self, slot: ConnSlot, session: Any) -> None:
        slot.control = ControlState.READY
        slot.session = session
        slot.control_gen += 1
        slot.control_load = 0
        self._touch(slot)

    def control_failed(self, slot: ConnSlot, exc: BaseException, *, refused: bool = False) -> None:
        """Starting a control session failed; ``refused``: the server's MaxSessions."""
        slot.control = ControlState.NONE
        slot.control_channels -= 1
        if refused and slot.established > 0:
            self._lower_capacity(slot)
            return  # waiters get a slot when one frees up
        if not any(s.alive and s.control is not ControlState.NONE for s in self.slots):
            self._fail_waiters(exc, lambda w: w.want is Want.CONTROL)
        self._touch(slot)

    def control_retired(self, slot: ConnSlot, session: Any) -> None:
        """The active control session is suspect: route nothing new to it."""
        if slot.session is not session:
            return
        slot.retiring.append(session)
        self._clear_control(slot)

    def control_closed(self, slot: ConnSlot, session: Any) -> None:
        """A control channel is gone (active or retiring; unknown ones ignored)."""
        if slot.session is session:
            self._clear_control(slot)
            slot.control_channels -= 1
        elif session in slot.retiring:
            slot.retiring.remove(session)
            slot.control_channels -= 1
        self._touch(slot)

    def channel_opened(self, slot: ConnSlot) -> None:
        """The server accepted a channel (any kind) on this connection."""
        slot.established += 1

    def channel_closed(self, slot: ConnSlot) -> None:
        slot.established -= 1

    def session_refused(self, slot: ConnSlot) -> None:
        """The server refused a channel we had a lease for (already released)."""
        self._lower_capacity(slot)

    # ---------------------------------------------------------- idle, close
    def expired(self, idle_timeout: float) -> list[ConnSlot]:
        """Remove and return ready connections idle for ``idle_timeout`` or more."""
        now = self.clock()
        out = [
            s
            for s in self.slots
            if s.is_ready() and s.idle_since is not None and now - s.idle_since >= idle_timeout
        ]
        for slot in out:
            self._drop(slot)
        return out

    def next_expiry(self, idle_timeout: float) -> float | None:
        """Seconds until the next idle connection expires, None if none is idle."""
        now = self.clock()
        times = [
            s.idle_since + idle_timeout - now
            for s in self.slots
            if s.is_ready() and s.idle_since is not None
        ]
        return max(0.0, min(times)) if times else None

    def close(self, exc: BaseException) -> list[ConnSlot]:
        """Refuse everything from now on; fail the queue; return the slots to close."""
        self.closed = True
        self._fail_waiters(exc, lambda w: True)
        slots, self.slots = self.slots, []
        for slot in slots:
            slot.alive = False
        return slots

    def stats(self) -> PoolStats:
        ready = [s for s in self.slots if s.is_ready()]
        return PoolStats(
            connections=len(ready),
            connecting=sum(1 for s in self.slots if s.state is ConnState.CONNECTING),
            sessions=sum(s.sessions for s in ready),
            capacity=sum(s.capacity for s in ready),
            queued=sum(1 for w in self.waiters if not w.future.done()),
            leases=sum(s.leases for s in ready),
            control_sessions=sum(1 for s in ready if s.control is ControlState.READY),
            control_load=sum(s.control_load for s in ready),
            closed=self.closed,
        )

    # ---------------------------------------------------------- helpers
    def control_session(self, lease: Lease) -> Any:
        """The control session a CONTROL lease refers to, None if it changed since."""
        slot = lease.slot
        if slot.alive and slot.control_gen == lease.gen and slot.control is ControlState.READY:
            return slot.session
        return None

    def _least_loaded_control(self) -> ConnSlot | None:
        ready = [s for s in self.slots if s.is_ready() and s.control is ControlState.READY]
        return min(ready, key=lambda s: (s.control_load, s.id)) if ready else None

    @staticmethod
    def _least(slots: Any) -> ConnSlot | None:
        candidates = list(slots)
        return min(candidates, key=lambda s: (s.sessions, s.id)) if candidates else None

    def _grant(self, waiter: Waiter, lease: Lease) -> None:
        waiter.future.set_result(lease)
        self._touch(lease.slot)

    def _grant_control(self, waiter: Waiter, slot: ConnSlot) -> None:
        slot.control_load += 1
        self._grant(waiter, Lease(slot, Want.CONTROL, slot.control_gen))

    def _clear_control(self, slot: ConnSlot) -> None:
        slot.control = ControlState.NONE
        slot.session = None
        slot.control_gen += 1
        slot.control_load = 0

    def _lower_capacity(self, slot: ConnSlot) -> None:
        """Cap connections at the channels the server has actually accepted.

        Counting accepted channels, not our reservations, makes one refusal
        enough to learn the limit even when many opens race.  sshd frees a
        slot a moment after a channel closes, so this can undershoot by one:
        safe, as more connections are opened instead.  MaxSessions is a
        property of the server, not of one connection, so the limit learned
        on one connection caps the others too (the largest count seen at a
        refusal, as undershooting is the only error); without that, a
        connection that happened never to be refused kept the configured
        ``max_sessions`` and kept getting refused.
        """
        new = max(1, slot.established)
        if new < slot.capacity:
            slot.capacity = new
        learned = max(new, self.learned_sessions or 0)
        if learned == self.learned_sessions:
            return
        self.learned_sessions = learned
        logger.warning(
            "server refused a channel on connection #%d with %d open: using at "
            "most %d per connection (set max_sessions below sshd's MaxSessions)",
            slot.id,
            slot.established,
            learned,
        )
        for other in self.slots:
            if other is not slot and other.capacity > learned:
                other.capacity = learned

    def _drop(self, slot: ConnSlot) -> None:
        slot.alive = False
        with contextlib.suppress(ValueError):
            self.slots.remove(slot)

    def _fail_waiters(self, exc: BaseException, which: Callable[[Waiter], bool]) -> None:
        keep: deque[Waiter] = deque()
        for waiter in self.waiters:
            if waiter.future.done():
                continue
            if which(waiter):
                waiter.future.set_exception(exc)
            else:
                keep.append(waiter)
        self.waiters = keep

    def _touch(self, slot: ConnSlot) -> None:
        if slot.is_idle():
            if slot.idle_since is None:
                slot.idle_since = self.clock()
        else:
            slot.idle_since = None

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids
