"""PoolState bookkeeping, without a network: every rule and limit, exactly.

PoolState never awaits; a test drives it like HostPool does: add waiters,
call assign(), report the outcome of the actions it asked for, release.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import pytest

from xqute_ssh.errors import SshConnectError, SshConnectionLost
from xqute_ssh.ssh.pool_state import (
    CONNECT_COOLDOWN,
    ConnSlot,
    Lease,
    OpenConnection,
    PoolState,
    StartControl,
    Waiter,
    Want,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(
    clock: Clock, max_sessions: int = 3, max_connections: int = 2, threshold: int = 4
) -> PoolState:
    return PoolState(max_sessions, max_connections, pipeline_threshold=threshold, clock=clock)


def want(state: PoolState, loop: asyncio.AbstractEventLoop, kind: Want) -> Waiter:
    return state.add_waiter(kind, loop.create_future())


def lease(w: Waiter) -> Lease:
    assert w.future.done() and not w.future.cancelled()
    return w.future.result()


def open_ready(state: PoolState) -> ConnSlot:
    """Run assign, expect exactly one OpenConnection, report it ready."""
    actions = state.assign()
    opens = [a for a in actions if isinstance(a, OpenConnection)]
    assert len(opens) == 1, actions
    state.connection_ready(opens[0].slot, link=object())
    return opens[0].slot


def control_ready(state: PoolState, actions: list) -> ConnSlot:
    starts = [a for a in actions if isinstance(a, StartControl)]
    assert len(starts) == 1, actions
    state.control_ready(starts[0].slot, session=object())
    return starts[0].slot


def check_invariants(state: PoolState) -> None:
    for slot in state.slots:
        assert slot.leases >= 0 and slot.control_load >= 0
        assert slot.control_channels >= 0
        assert slot.sessions <= slot.capacity, slot
    assert state.stats().queued == sum(1 for w in state.waiters if not w.future.done())


# ---------------------------------------------------------------- sessions
def test_nothing_happens_without_demand(clock: Clock) -> None:
    state = make(clock)
    assert state.assign() == []
    s = state.stats()
    assert (s.connections, s.connecting, s.sessions, s.capacity, s.queued) == (
        0,
        0,
        0,
        0,
        0,
    )


def test_first_session_opens_a_connection_then_is_granted(loop, clock) -> None:
    state = make(clock)
    w = want(state, loop, Want.SESSION)
    actions = state.assign()
    assert [type(a) for a in actions] == [OpenConnection]
    s = state.stats()
    assert (s.connections, s.connecting, s.queued) == (0, 1, 1)
    assert not w.future.done()
    state.connection_ready(actions[0].slot, link=object())
    assert state.assign() == []
    assert lease(w).slot is actions[0].slot
    s = state.stats()
    assert (s.connections, s.sessions, s.capacity, s.queued, s.leases) == (
        1,
        1,
        3,
        0,
        1,
    )


def test_max_sessions_then_second_connection_then_queue(loop, clock) -> None:
    state = make(clock, max_sessions=3, max_connections=2)
    ws = [want(state, loop, Want.SESSION) for _ in range(8)]
    first = open_ready(state)
    # 3 granted on the first connection; the rest need another connection
    second = open_ready(state)
    assert second is not first
    state.assign()
    granted = [w for w in ws if w.future.done()]
    assert granted == ws[:6]  # FIFO
    assert {lease(w).slot for w in ws[:3]} | {lease(w).slot for w in ws[3:6]} == {
        first,
        second,
    }
    assert state.assign() == []  # max_connections reached: no third
    s = state.stats()
    assert (s.connections, s.sessions, s.capacity, s.queued) == (2, 6, 6, 2)
    # releasing one grants the oldest waiter, and only it
    state.release(lease(ws[0]))
    state.assign()
    assert ws[6].future.done() and not ws[7].future.done()
    assert state.stats().queued == 1
    check_invariants(state)


def test_only_one_connection_is_opened_at_a_time(loop, clock) -> None:
    state = make(clock, max_sessions=1, max_connections=4)
    for _ in range(4):
        want(state, loop, Want.SESSION)
    actions = state.assign()
    assert len(actions) == 1
    assert state.assign() == []  # still connecting: no second open
    state.connection_ready(actions[0].slot, link=object())
    assert len(state.assign()) == 1  # now the next one


def test_least_loaded_connection_gets_the_session(loop, clock) -> None:
    state = make(clock, max_sessions=3, max_connections=2)
    ws = [want(state, loop, Want.SESSION) for _ in range(4)]
    a = open_ready(state)
    b = open_ready(state)
    state.assign()
    state.release(lease(ws[0]))
    state.release(lease(ws[1]))  # a has 1 session, b has 1
    w = want(state, loop, Want.SESSION)
    state.assign()
    assert lease(w).slot is a  # tie broken by age
    w2 = want(state, loop, Want.SESSION)
    state.assign()
    assert lease(w2).slot is b


# ---------------------------------------------------------------- fast path
def test_try_grant_only_when_nothing_queued_and_no_io(loop, clock) -> None:
    state = make(clock, max_sessions=2, max_connections=1, threshold=2)
    assert state.try_grant(Want.SESSION) is None  # no connection yet
    assert state.try_grant(Want.CONTROL) is None
    w = want(state, loop, Want.SESSION)
    slot = open_ready(state)
    assert state.try_grant(Want.SESSION) is None  # w is first in line
    state.assign()
    got = state.try_grant(Want.SESSION)
    assert got is not None and got.slot is slot and slot.leases == 2
    assert state.try_grant(Want.SESSION) is None  # full
    state.release(lease(w))
    state.release(got)
    c = want(state, loop, Want.CONTROL)
    control_ready(state, state.assign())
    state.assign()
    ctl = state.try_grant(Want.CONTROL)
    assert ctl is not None and ctl.want is Want.CONTROL and slot.control_load == 2
    assert state.try_grant(Want.CONTROL) is None  # at the threshold: assign decides
    state.release(ctl)
    state.release(lease(c))
    assert slot.control_load == 0 and slot.is_idle()


# ---------------------------------------------------------------- cancellation
def test_cancelled_waiter_is_never_granted_and_leaks_nothing(loop, clock) -> None:
    state = make(clock, max_sessions=1, max_connections=1)
    ws = [want(state, loop, Want.SESSION) for _ in range(3)]
    open_ready(state)
    state.assign()
    assert ws[0].future.done()
    ws[1].future.cancel()  # the task waiting on it was cancelled
    state.cancel_waiter(ws[1])
    assert state.stats().queued == 1
    state.release(lease(ws[0]))
    state.assign()
    assert ws[2].future.done() and ws[1].future.cancelled()
    s = state.stats()
    assert (s.sessions, s.leases, s.queued) == (1, 1, 0)


def test_cancelled_future_dropped_by_assign_even_without_cancel_waiter(loop, clock) -> None:
    state = make(clock, max_sessions=1, max_connections=1)
    w1 = want(state, loop, Want.SESSION)
    w2 = want(state, loop, Want.SESSION)
    w1.future.cancel()
    open_ready(state)
    state.assign()
    assert lease(w2).slot.leases == 1
    assert state.stats().queued == 0


def test_granted_then_cancelled_waiter_gives_the_slot_back(loop, clock) -> None:
    """The race: granted, but the task was cancelled before it resumed."""
    state = make(clock, max_sessions=1, max_connections=1)
    w1 = want(state, loop, Want.SESSION)
    w2 = want(state, loop, Want.SESSION)
    open_ready(state)
    state.assign()
    assert w1.future.done()
    state.cancel_waiter(w1)  # what HostPool does on CancelledError/timeout
    state.assign()
    assert w2.future.done()
    s = state.stats()
    assert (s.sessions, s.leases, s.queued) == (1, 1, 0)


def test_timed_out_waiter_removed(loop, clock) -> None:
    state = make(clock, max_sessions=1, max_connections=1)
    w1 = want(state, loop, Want.SESSION)
    w2 = want(state, loop, Want.SESSION)
    open_ready(state)
    state.assign()
    state.cancel_waiter(w2)  # acquire_timeout expired while queued
    assert w2.future.cancelled()
    assert state.stats().queued == 0
    state.release(lease(w1))
    state.assign()
    assert state.stats().sessions == 0


def test_cancel_of_failed_waiter_is_harmless(loop, clock) -> None:
    state = make(clock)
    w = want(state, loop, Want.SESSION)
    (action,) = state.assign()
    state.connection_failed(action.slot, SshConnectError("h:22", "refused"))
    assert isinstance(w.future.exception(), SshConnectError)
    state.cancel_waiter(w)
    assert state.stats().sessions == 0


# ---------------------------------------------------------------- control
def test_control_needs_connection_then_control_session(loop, clock) -> None:
    state = make(clock)
    w = want(state, loop, Want.CONTROL)
    slot = open_ready(state)
    actions = state.assign()
    assert [type(a) for a in actions] == [StartControl]
    assert state.stats().sessions == 1  # the starting control session holds a slot
    assert not w.future.done()
    assert state.assign() == []  # one start at a time
    control_ready(state, actions)
    state.assign()
    got = lease(w)
    assert got.slot is slot and got.want is Want.CONTROL
    assert state.control_session(got) is slot.session
    s = state.stats()
    assert (s.sessions, s.control_sessions, s.control_load, s.leases) == (1, 1, 1, 0)
    state.release(got)
    assert state.stats().control_load == 0


def test_control_pipelines_and_expands_past_threshold(loop, clock) -> None:
    state = make(clock, max_sessions=3, max_connections=2, threshold=2)
    first = [want(state, loop, Want.CONTROL)]
    open_ready(state)
    control_ready(state, state.assign())
    state.assign()
    more = [want(state, loop, Want.CONTROL) for _ in range(4)]
    actions = state.assign()
    # all granted at once (pipelining), and one new connection requested
    assert all(w.future.done() for w in first + more)
    assert [type(a) for a in actions] == [OpenConnection]
    assert state.stats().control_load == 5
    state.connection_ready(actions[0].slot, link=object())
    # the connection was opened for run(): a control session starts right away
    second = control_ready(state, state.assign())
    w = want(state, loop, Want.CONTROL)
    state.assign()
    assert lease(w).slot is second  # least loaded
    check_invariants(state)


def test_control_below_threshold_does_not_expand(loop, clock) -> None:
    state = make(clock, threshold=4)
    want(state, loop, Want.CONTROL)
    open_ready(state)
    control_ready(state, state.assign())
    state.assign()
    for _ in range(3):
        want(state, loop, Want.CONTROL)
    assert state.assign() == []
    assert state.stats().control_load == 4


def test_control_start_on_existing_connection_with_room(loop, clock) -> None:
    state = make(clock, max_sessions=3, threshold=1)
    s1 = want(state, loop, Want.SESSION)
    slot = open_ready(state)
    state.assign()
    assert s1.future.done()
    w = want(state, loop, Want.CONTROL)
    actions = state.assign()
    assert actions == [StartControl(slot)]  # no new connection needed
    assert state.stats().sessions == 2
    control_ready(state, actions)
    state.assign()
    assert lease(w).slot is slot


def test_control_served_while_sessions_queue(loop, clock) -> None:
    state = make(clock, max_sessions=2, max_connections=1)
    c = want(state, loop, Want.CONTROL)
    open_ready(state)
    control_ready(state, state.assign())
    state.assign()
    s = [want(state, loop, Want.SESSION) for _ in range(2)]
    c2 = want(state, loop, Want.CONTROL)
    state.assign()
    assert s[0].future.done() and not s[1].future.done()
    assert c.future.done() and c2.future.done()  # control needs no new slot
    assert state.stats().queued == 1


def test_control_waits_fifo_for_a_slot(loop, clock) -> None:
    state = make(clock, max_sessions=1, max_connections=1)
    s1 = want(state, loop, Want.SESSION)
    open_ready(state)
    state.assign()
    c = want(state, loop, Want.CONTROL)
    s2 = want(state, loop, Want.SESSION)
    assert state.assign() == []
    state.release(lease(s1))
    actions = state.assign()
    assert [type(a) for a in actions] == [StartControl]  # c was first in line
    assert not s2.future.done()
    control_ready(state, actions)
    state.assign()
    assert c.future.done() and not s2.future.done()


def test_control_failure_fails_only_control_waiters(loop, clock) -> None:
    state = make(clock, max_sessions=2, max_connections=1)
    c = want(state, loop, Want.CONTROL)
    slot = open_ready(state)
    (_start,) = state.assign()
    s1 = want(state, loop, Want.SESSION)
    s2 = want(state, loop, Want.SESSION)
    state.assign()
    assert s1.future.done() and not s2.future.done()
    state.control_failed(slot, SshConnectionLost("h", "boom"))
    assert isinstance(c.future.exception(), SshConnectionLost)
    state.assign()
    assert s2.future.done()  # the control slot went to the queued session
    s = state.stats()
    assert (s.sessions, s.queued, s.control_sessions) == (2, 0, 0)


def test_refused_control_lowers_capacity_and_waits(loop, clock) -> None:
    state = make(clock, max_sessions=8, max_connections=1)
    s1 = want(state, loop, Want.SESSION)
    slot = open_ready(state)
    state.assign()
    state.channel_opened(slot)  # s1's channel was accepted
    c = want(state, loop, Want.CONTROL)
    state.assign()
    state.control_failed(slot, SshConnectionLost("h", "refused"), refused=True)
    assert slot.capacity == 1 and not c.future.done()
    state.release(lease(s1))
    actions = state.assign()
    assert actions == [StartControl(slot)]


def test_session_refused_lowers_capacity(loop, clock) -> None:
    state = make(clock, max_sessions=8, max_connections=1)
    ws = [want(state, loop, Want.SESSION) for _ in range(5)]
    slot = open_ready(state)
    state.assign()
    state.channel_opened(slot)
    state.channel_opened(slot)  # two accepted, three refused
    for w in ws[2:]:
        state.release(lease(w))
        state.session_refused(slot)
    assert slot.capacity == 2  # one refusal was enough; the others change nothing
    w = want(state, loop, Want.SESSION)
    state.assign()
    assert not w.future.done()
    assert state.stats().capacity == 2


def test_limit_learned_on_one_connection_caps_all_of_the_host(loop, clock) -> None:
    """MaxSessions belongs to the server: a refusal on #1 caps #2 and new ones."""
    state = make(clock, max_sessions=8, max_connections=3)
    ws = [want(state, loop, Want.SESSION) for _ in range(16)]
    first = open_ready(state)
    second = open_ready(state)
    state.assign()
    for _ in range(2):
        state.channel_opened(first)
    state.release(lease(ws[2]))
    state.session_refused(first)  # 2 accepted, the third refused
    assert (first.capacity, second.capacity) == (2, 2)
    want(state, loop, Want.SESSION)
    third = open_ready(state)
    assert third.capacity == 2
    assert state.stats().capacity <= 2 * state.stats().connections


def test_retired_control_is_replaced_and_stale_leases_are_noops(loop, clock) -> None:
    state = make(clock, max_sessions=3, max_connections=1)
    c1 = want(state, loop, Want.CONTROL)
    slot = open_ready(state)
    control_ready(state, state.assign())
    state.assign()
    old = slot.session
    state.control_retired(slot, old)  # a request timed out on it
    assert state.control_session(lease(c1)) is None
    assert state.stats().sessions == 1  # still open until it drains
    c2 = want(state, loop, Want.CONTROL)
    actions = state.assign()
    assert actions == [StartControl(slot)]
    assert state.stats().sessions == 2
    control_ready(state, actions)
    state.assign()
    state.release(lease(c1))  # stale generation: must not touch the new load
    assert slot.control_load == 1
    state.control_closed(slot, old)
    assert state.stats().sessions == 1
    state.release(lease(c2))
    assert slot.control_load == 0 and slot.is_idle()


def test_control_closed_frees_slot_and_unknown_session_ignored(loop, clock) -> None:
    state = make(clock)
    want(state, loop, Want.CONTROL)
    slot = open_ready(state)
    control_ready(state, state.assign())
    state.assign()
    state.control_closed(slot, object())  # not ours: ignored
    assert state.stats().sessions == 1
    state.control_closed(slot, slot.session)
    s = state.stats()
    assert (s.sessions, s.control_sessions, s.control_load) == (0, 0, 0)


# ---------------------------------------------------------------- failures
def test_connect_failure_with_nothing_open_fails_queue(loop, clock) -> None:
    state = make(clock)
    ws = [want(state, loop, Want.SESSION), want(state, loop, Want.CONTROL)]
    (action,) = state.assign()
    err = SshConnectError("h:22", "refused")
    state.connection_failed(action.slot, err)
    assert all(w.future.exception() is err for w in ws)
    s = state.stats()
    assert (s.connecting, s.queued) == (0, 0)
    # the next caller tries again
    want(state, loop, Want.SESSION)
    assert [type(a) for a in state.assign()] == [OpenConnection]


def test_connect_failure_with_others_open_cools_down(loop, clock) -> None:
    state = make(clock, max_sessions=1, max_connections=2)
    ws = [want(state, loop, Want.SESSION) for _ in range(2)]
    open_ready(state)
    (action,) = state.assign()
    state.connection_failed(action.slot, SshConnectError("h:22", "reset"))
    assert not ws[1].future.done()  # still waiting for the open connection
    assert state.assign() == []  # cooling down
    clock.now += CONNECT_COOLDOWN
    assert [type(a) for a in state.assign()] == [OpenConnection]


def test_lost_connection_is_dropped_and_stale_release_harmless(loop, clock) -> None:
    state = make(clock, max_sessions=2, max_connections=1)
    ws = [want(state, loop, Want.SESSION) for _ in range(2)]
    slot = open_ready(state)
    state.assign()
    state.connection_lost(slot)
    s = state.stats()
    assert (s.connections, s.sessions, s.capacity) == (0, 0, 0)
    for w in ws:
        state.release(lease(w))
    w = want(state, loop, Want.SESSION)
    assert [type(a) for a in state.assign()] == [OpenConnection]
    assert not w.future.done()


# ---------------------------------------------------------------- idle, close
def test_idle_connections_expire(loop, clock) -> None:
    state = make(clock, max_sessions=2, max_connections=2)
    w = want(state, loop, Want.SESSION)
    slot = open_ready(state)
    state.assign()
    assert state.next_expiry(10) is None  # busy
    clock.now += 100
    assert state.expired(10) == []
    state.release(lease(w))
    assert state.next_expiry(10) == 10
    clock.now += 9.5
    assert state.expired(10) == []
    assert state.next_expiry(10) == pytest.approx(0.5)
    clock.now += 0.5
    assert state.expired(10) == [slot]
    assert state.stats().connections == 0 and not slot.alive


def test_control_session_without_work_counts_as_idle(loop, clock) -> None:
    state = make(clock)
    c = want(state, loop, Want.CONTROL)
    slot = open_ready(state)
    control_ready(state, state.assign())
    state.assign()
    clock.now += 50
    assert state.expired(10) == []  # a run() is in flight
    state.release(lease(c))
    clock.now += 10
    assert state.expired(10) == [slot]


def test_close_fails_queue_and_stops_assigning(loop, clock) -> None:
    state = make(clock, max_sessions=1, max_connections=1)
    w1 = want(state, loop, Want.SESSION)
    w2 = want(state, loop, Want.SESSION)
    slot = open_ready(state)
    state.assign()
    err = SshConnectionLost("h", "closed")
    assert state.close(err) == [slot]
    assert w1.future.done() and w2.future.exception() is err
    want(state, loop, Want.SESSION)
    assert state.assign() == []
    assert state.stats().closed


# ---------------------------------------------------------------- random walk
@pytest.mark.parametrize("seed", range(40))
def test_random_walk_keeps_books_exact(loop, clock, seed: int) -> None:
    """Random arrivals, cancellations, releases and I/O outcomes: invariants hold."""
    rng = random.Random(seed)
    state = make(clock, max_sessions=rng.randint(1, 4), max_connections=3, threshold=3)
    waiters: list[Waiter] = []
    held: list[Lease] = []
    pending: list = []
    for _ in range(300):
        op = rng.random()
        if op < 0.3:
            kind = rng.choice([Want.SESSION, Want.CONTROL])
            fast = state.try_grant(kind) if rng.random() < 0.5 else None
            if fast is not None:
                held.append(fast)
            else:
                waiters.append(want(state, loop, kind))
        elif op < 0.4 and waiters:
            state.cancel_waiter(waiters.pop(rng.randrange(len(waiters))))
        elif op < 0.6 and held:
            state.release(held.pop(rng.randrange(len(held))))
        elif op < 0.75 and pending:
            action = pending.pop(0)
            ok = rng.random() < 0.85
            if isinstance(action, OpenConnection):
                if ok:
                    state.connection_ready(action.slot, link=object())
                else:
                    state.connection_failed(action.slot, SshConnectError("h", "x"))
            elif action.slot.alive:
                if ok:
                    state.control_ready(action.slot, session=object())
                else:
                    state.control_failed(action.slot, SshConnectionLost("h", "x"))
        elif op < 0.78 and state.slots:
            slot = rng.choice(state.slots)
            if slot.is_ready():
                state.connection_lost(slot)
                pending = [a for a in pending if a.slot is not slot]
        elif op < 0.8:
            clock.now += rng.random() * 10
            state.expired(5)
        pending.extend(state.assign())
        for w in list(waiters):
            if w.future.done():
                waiters.remove(w)
                if not w.future.cancelled() and w.future.exception() is None:
                    held.append(w.future.result())
        check_invariants(state)
        # the books: what the slots count equals the leases we hold
        for slot in state.slots:
            assert slot.leases == sum(
                1 for ls in held if ls.slot is slot and ls.want is Want.SESSION
            )
            assert slot.control_load == sum(
                1
                for ls in held
                if ls.slot is slot and ls.want is Want.CONTROL and ls.gen == slot.control_gen
            )
        assert sum(1 for s in state.slots if s.state.value == "connecting") <= 1
        assert len(state.slots) <= 3
    # drain: release everything; nothing may remain in use
    for ls in held:
        state.release(ls)
    for w in waiters:
        state.cancel_waiter(w)
    assert state.stats().leases == 0 and state.stats().control_load == 0
