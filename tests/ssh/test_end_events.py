"""End events (schedulers/ssh/events.py) against real sshd hosts.

A job's end must reach the controller when the wrapper writes it, not at the
next poll; a host that will not forward a port still runs everything (by
polling); nobody but the relay is heard on the port; the relay goes away
with the run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

from xqute_ssh import JobStatus, Xqute
from xqute_ssh.schedulers.ssh import events
from xqute_ssh.ssh import HostConfig, HostPool

from ..helpers import pids_with, wait_until

#: A poll interval no test waits out: an end seen before the run's hang
#: guard was seen through its event.
NEVER = 600.0


def servers(cluster: Any) -> dict[str, dict[str, Any]]:
    return {h.name: h.server_spec() for h in cluster.hosts}


def relay_fifos(xq: Xqute) -> list[str]:
    hosts = xq.scheduler.backend.hosts  # type: ignore[attr-defined]
    return [h.events.fifo for h in hosts.values() if h.events and h.events.fifo]


async def test_job_ends_are_seen_without_waiting_for_a_poll(
    sshd_cluster, tmp_path: Path, monkeypatch
) -> None:
    # Every launch must carry its host's relay, even on a loaded machine
    # where a relay takes longer than the usual wait to come up.
    monkeypatch.setattr("xqute_ssh.schedulers.ssh.host.EVENTS_WAIT", 30.0)
    xq = Xqute(
        "ssh",
        forks=4,
        workdir=tmp_path / "wd",
        scheduler_opts={"servers": servers(sshd_cluster), "poll_interval": NEVER},
    )
    # Longer than the submissions' own wake-ups: only an event ends them.
    for i in range(8):
        await xq.feed(["bash", "-c", f"sleep 0.5; exit {i % 2}"])
    fifos: list[str] = []

    async def watch() -> None:
        await wait_until(lambda: len(relay_fifos(xq)) == 2, what="both relays on")
        fifos.extend(relay_fifos(xq))

    watcher = asyncio.ensure_future(watch())
    t0 = time.monotonic()
    async with asyncio.timeout(60):  # the poll alone would take 600 s per wave
        await xq.run_until_complete()
    took = time.monotonic() - t0
    await watcher
    assert [j.status for j in xq.jobs] == [
        JobStatus.FINISHED if i % 2 == 0 else JobStatus.FAILED for i in range(8)
    ]
    assert took < 60
    # The run closed its relays: their FIFOs and processes are gone.
    assert len(fifos) == 2
    await wait_until(lambda: not any(Path(f).exists() for f in fifos), what="FIFOs removed")
    await wait_until(lambda: not pids_with("xq-relay"), what="relays ended")


async def test_an_end_that_beats_its_launch_reply_is_not_lost(
    sshd_cluster, tmp_path: Path, monkeypatch
) -> None:
    """Short jobs under load: a job often ends, and its event arrives, before
    its launch reply is back (the job is not SUBMITTED yet, so the event
    cannot be applied then).  The event must still count once the job is
    SUBMITTED; lost, the job waited for the next poll (600 s here).  Seen
    without the fix: 2 of 200 jobs stuck in one run of three."""
    # every launch must carry its host's relay, even on a loaded machine
    monkeypatch.setattr("xqute_ssh.schedulers.ssh.host.EVENTS_WAIT", 30.0)
    for round_ in range(2):
        xq = Xqute(
            "ssh",
            forks=32,
            workdir=tmp_path / f"wd{round_}",
            scheduler_opts={"servers": servers(sshd_cluster), "poll_interval": NEVER},
        )
        for _ in range(200):
            await xq.feed(["true"])
        async with asyncio.timeout(120):  # a lost end would wait out the 600 s poll
            outcome = await xq.run_until_complete()
        assert outcome.ok and all(j.status == JobStatus.FINISHED for j in xq.jobs)


async def test_a_host_that_refuses_forwarding_is_polled(
    sshd_cluster_factory, tmp_path: Path, caplog
) -> None:
    cluster = sshd_cluster_factory(n=1, sshd_config=("AllowTcpForwarding no",))
    host = cluster.hosts[0]
    xq = Xqute(
        "ssh",
        forks=2,
        workdir=tmp_path / "wd",
        scheduler_opts={"servers": servers(cluster), "poll_interval": 0.1},
    )
    for _ in range(4):
        await xq.feed(["true"])
    with caplog.at_level(logging.INFO, logger="xqute_ssh"):
        async with asyncio.timeout(60):
            await xq.run_until_complete()
    assert {j.status for j in xq.jobs} == {JobStatus.FINISHED}
    said = [r.getMessage() for r in caplog.records if "no end events" in r.getMessage()]
    assert len(said) == 1, said
    assert host.address in said[0] and "polling" in said[0]


async def test_only_the_relay_is_heard_on_the_event_port(sshd_host) -> None:
    got: list[int] = []
    pool = HostPool(HostConfig(**sshd_host.server_spec()))
    async with pool:
        ev = events.EndEvents("h", got.append, pool.run, pool.listen_loopback)
        ev._relay_up = asyncio.get_running_loop().create_future()
        listener = await pool.listen_loopback(
            lambda _h, _p: events._RelayChannel(ev, b"secret")
        )
        port = listener.get_port()
        # The harness host is this machine: its loopback is ours.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"guess\n7\n")
        await writer.drain()
        async with asyncio.timeout(10):
            assert await reader.read() == b""  # closed on us
        writer.close()
        assert got == [] and not ev._relay_up.done()

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"secret\n5\n\nnot-a-number\n12")
        await writer.drain()
        await wait_until(lambda: ev._relay_up is not None and ev._relay_up.done())
        writer.write(b"\n")
        await writer.drain()
        await wait_until(lambda: got == [5, 12], what="both indexes")
        writer.close()
        listener.close()


def _write_line(fifo: str, line: str) -> None:
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # a relay reads it, or ENXIO
    try:
        os.write(fd, line.encode() + b"\n")
    finally:
        os.close(fd)


async def test_a_relay_cut_off_ends_and_a_new_one_takes_over(sshd_host, monkeypatch) -> None:
    """sshd crashes under the relay: the relay ends on its next write (and
    removes its FIFO), and the next start gives a working one."""
    monkeypatch.setattr(events, "RESTART_AFTER", 0.0)
    got: list[int] = []
    pool = HostPool(HostConfig(**sshd_host.server_spec()))
    async with pool:
        ev = events.EndEvents("h", got.append, pool.run, pool.listen_loopback)
        ev.kick()
        await ev.started()
        first = ev.fifo
        assert first is not None and await asyncio.to_thread(Path(first).is_fifo)
        await asyncio.to_thread(_write_line, first, "3")
        await wait_until(lambda: got == [3], what="the first relay's line")

        await asyncio.to_thread(sshd_host.restart)  # connections drop, processes live on
        await wait_until(lambda: ev.fifo is None, what="the relay's channel seen closed")
        await asyncio.to_thread(_write_line, first, "4")  # its next write fails: it ends
        await wait_until(lambda: not Path(first).parent.exists(), what="the old FIFO removed")

        ev.kick()
        await ev.started()
        second = ev.fifo
        assert second is not None and second != first
        await asyncio.to_thread(_write_line, second, "5")
        await wait_until(lambda: got == [3, 5], what="the new relay's line")
        await ev.close()
        await wait_until(lambda: not Path(second).parent.exists(), what="closed relay's FIFO removed")


def test_start_reply_parsing() -> None:
    assert events.parse_start("xq-relay 42 /home/u/.cache/xqute-ssh/ev-ab/fifo\n") == (
        42,
        "/home/u/.cache/xqute-ssh/ev-ab/fifo",
    )
    assert events.parse_start("xq-relay-error no HOME\n") == "no HOME"
    assert events.parse_start("") == "no reply"
