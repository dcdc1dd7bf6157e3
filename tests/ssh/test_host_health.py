"""HostHealth bookkeeping, without a network: every transition, exactly.

HostHealth never awaits; a test drives it like the SSH scheduler does: ask
for due probes, report their outcomes (and what connections for jobs saw),
move the clock.
"""

from __future__ import annotations

import random

import pytest

from xqute_ssh.ssh.health import Change, HostHealth, HostState


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(clock: Clock, *names: str, cooldown: float = 5, backoff: float = 2,
         max_interval: float = 60) -> HostHealth:
    return HostHealth(names or ("a", "b"), cooldown=cooldown, backoff=backoff,
                      max_interval=max_interval, clock=clock)


def test_new_hosts_take_no_jobs_until_their_first_probe_answers(clock) -> None:
    h = make(clock)
    assert h.usable_names() == set() and h.pending()
    assert h.next_probe_in() == 0.0
    assert h.due_probes() == ["a", "b"]
    assert h.state("a") is HostState.PROBING
    assert h.due_probes() == []  # in flight: not asked twice
    assert h.succeeded("a") == Change("a", up=True, first=True)
    assert h.usable_names() == {"a"}
    assert h.pending()  # b's first probe is not over
    assert h.succeeded("a") is None  # already up: nothing to say


def test_failure_takes_host_out_at_once_and_says_so_once(clock) -> None:
    h = make(clock)
    h.due_probes()
    h.succeeded("a")
    change = h.failed("a", "connection refused")
    assert change == Change("a", up=False, reason="connection refused")
    assert not h.usable("a") and h.state("a") is HostState.DOWN
    # more jobs (or connections) seeing it fail: no new line, no new schedule
    probe_at = h.health_of("a").next_probe
    clock.now += 1
    assert h.failed("a", "connection refused") is None
    assert h.health_of("a").next_probe == probe_at
    assert h.health_of("a").failures == 1


def test_probes_back_off_and_are_capped(clock) -> None:
    h = make(clock, "a", cooldown=5, backoff=2, max_interval=30)
    h.due_probes()
    assert h.failed("a", "no SSH answer within 10s") == Change(
        "a", up=False, reason="no SSH answer within 10s", first=True
    )
    waits = []
    for _ in range(6):
        wait = h.next_probe_in()
        assert wait is not None
        waits.append(wait)
        clock.now += wait - 0.01
        assert h.due_probes() == []  # not before it is due
        clock.now += 0.01
        assert h.due_probes() == ["a"]
        assert h.next_probe_in() is None  # in flight
        assert h.failed("a", "still silent") is None  # a failed re-probe: silent
    assert waits == [5, 10, 20, 30, 30, 30]
    assert h.health_of("a").reason == "still silent"


def test_host_comes_back_when_a_probe_answers(clock) -> None:
    h = make(clock)
    h.due_probes()
    h.succeeded("a")
    h.succeeded("b")
    h.failed("a", "refused")
    clock.now += 5
    assert h.due_probes() == ["a"]
    assert not h.usable("a")  # probing: still no jobs
    assert h.succeeded("a") == Change("a", up=True)
    assert h.usable("a")
    rec = h.health_of("a")
    assert rec.failures == 0 and rec.reason == "" and rec.down_since is None
    # a second outage starts from the cool-down again, not the old backoff
    assert h.failed("a", "refused") is not None
    assert h.next_probe_in() == 5


def test_a_connection_for_jobs_may_bring_a_host_back(clock) -> None:
    h = make(clock)
    h.due_probes()
    h.failed("a", "refused")
    assert h.succeeded("a") == Change("a", up=True, first=True)
    assert h.next_probe_in() == 0.0 or h.state("b") is HostState.PROBING


def test_permanent_failure_is_said_once_and_never_probed(clock) -> None:
    h = make(clock)
    h.due_probes()
    change = h.failed("a", "authentication failed", permanent=True)
    assert change == Change("a", up=False, reason="authentication failed", first=True,
                            permanent=True)
    assert h.state("a") is HostState.BROKEN
    clock.now += 10_000
    assert "a" not in h.due_probes()
    assert h.failed("a", "authentication failed", permanent=True) is None
    assert h.succeeded("a") is None and not h.usable("a")
    # an up host can break too (host key changed mid-run)
    h.succeeded("b")
    assert h.failed("b", "host key CHANGED", permanent=True) is not None
    assert h.state("b") is HostState.BROKEN


def test_hopeless_only_when_no_host_can_answer(clock) -> None:
    h = make(clock, "a", "b", "c")
    assert h.hopeless(30) is None  # nothing known yet
    h.due_probes()
    h.failed("a", "connection refused")
    h.failed("b", "authentication failed", permanent=True)
    assert h.hopeless(30) is None  # c's first probe is not over
    h.failed("c", "no SSH answer within 10s")
    # none ever answered: fail fast, naming every host and why
    assert h.hopeless(30) == (
        "every host is down: a: connection refused; b: authentication failed; "
        "c: no SSH answer within 10s"
    )


def test_an_outage_of_every_host_is_waited_out_for_a_while(clock) -> None:
    h = make(clock)
    h.due_probes()
    h.succeeded("a")
    h.succeeded("b")
    h.failed("a", "refused")
    assert h.hopeless(30) is None  # b is up
    clock.now += 10
    h.failed("b", "refused")
    clock.now += 20  # a down 30 s, b 20 s
    assert h.hopeless(30) is None
    clock.now += 10
    assert h.hopeless(30) is not None
    # a probe in flight for a host that was down still counts as down
    h.due_probes()
    assert h.hopeless(30) is not None
    h.succeeded("b")
    assert h.hopeless(30) is None


def test_repr_counts_states(clock) -> None:
    h = make(clock, "a", "b", "c")
    h.due_probes()
    h.succeeded("a")
    h.failed("b", "x")
    assert repr(h) == "<HostHealth [1 probing, 1 up, 1 down]>"


@pytest.mark.parametrize("seed", range(20))
def test_random_walk_keeps_the_rules(clock, seed: int) -> None:
    """Random outcomes and clock moves: the invariants hold at every step."""
    rng = random.Random(seed)
    names = [f"h{i}" for i in range(4)]
    h = make(clock, *names, cooldown=1, backoff=2, max_interval=8)
    in_flight: set[str] = set()
    down_said: set[str] = set()
    for _ in range(400):
        op = rng.random()
        if op < 0.3:
            in_flight.update(h.due_probes())
        elif op < 0.55 and in_flight:
            name = rng.choice(sorted(in_flight))
            in_flight.discard(name)
            ok = rng.random() < 0.4
            change = h.succeeded(name) if ok else h.failed(
                name, "x", permanent=rng.random() < 0.05
            )
            if change is not None and change.up:
                down_said.discard(name)
            elif change is not None:
                # said once per outage (becoming unusable is news, though)
                assert name not in down_said or change.permanent
                down_said.add(name)
        elif op < 0.7:
            name = rng.choice(names)  # a connection for jobs
            before = h.state(name)
            change = h.failed(name, "y") if rng.random() < 0.5 else h.succeeded(name)
            if change is not None and not change.up:
                assert name not in down_said
                down_said.add(name)
            elif change is not None:
                down_said.discard(name)
            if before is HostState.PROBING and h.state(name) is not HostState.PROBING:
                in_flight.discard(name)
        else:
            clock.now += rng.random() * 5
        for rec in h.hosts.values():
            assert (rec.state is HostState.UP) == h.usable(rec.name)
            assert (rec.state is HostState.UP) == (rec.down_since is None and rec.ever_up)
            assert (rec.next_probe is not None) == (rec.state is HostState.DOWN)
            if rec.state is HostState.DOWN:
                assert rec.next_probe is not None and rec.down_since is not None
                assert rec.next_probe - clock.now <= 8 + 1e-9
                assert rec.failures >= 1 and rec.reason
            if rec.state is HostState.UP:
                assert rec.failures == 0 and rec.reason == ""
            # every outage was said, and every return
            assert rec.is_down == (rec.name in down_said)
        wait = h.next_probe_in()
        if wait is not None:
            assert 0 <= wait <= 8


def test_messages_name_hosts_by_their_labels(clock) -> None:
    h = HostHealth(["a"], clock=clock, labels={"a": "a (root@10.0.0.1:22)"})
    h.due_probes()
    h.failed("a", "connection refused")
    assert h.hopeless(30) == "every host is down: a (root@10.0.0.1:22): connection refused"


def test_live_view_lists_the_hosts_that_are_down(clock) -> None:
    import io

    from rich.console import Console

    from xqute_ssh.cli.progress import LiveView, _hosts_down
    from xqute_ssh.cli.tally import Tally

    h = HostHealth(["a", "b"], clock=clock, labels={"a": "a (root@10.0.0.1:22)"})
    h.due_probes()
    h.succeeded("b")
    h.failed("a", "connection refused")
    buf = io.StringIO()
    console = Console(file=buf, width=120, force_terminal=False)
    view = LiveView(console, Tally(total=3))
    view.hosts_down = lambda: _hosts_down(h)
    console.print(view.render())
    assert "host a (root@10.0.0.1:22) is down: connection refused" in buf.getvalue()
    h.succeeded("a")
    buf.truncate(0)
    console.print(view.render())
    assert "is down" not in buf.getvalue()
