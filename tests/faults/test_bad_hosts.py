"""One bad host in the list: it costs the run its share and never blocks a stop.

Each kind of bad host (refused port, silent TCP listener, failed auth, changed
host key, sshd killed and restarted, network cut) gets two runs against real
sshd hosts: a full run (every job FINISHED on the good host(s), each exactly
once, the bad host said once) and a run stopped by SIGINT while jobs run
(the stop returns within seconds, no new job starts after it, nothing is
left running).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from xqute_ssh import JobStatus, Xqute
from xqute_ssh.errors import SshConnectError
from xqute_ssh.schedulers.ssh import parse_jid
from xqute_ssh.ssh import HostConfig, HostPool

from ..helpers import read, wait_until

#: Hang guard for a stop; the stops measured here take about a second.
STOP_BOUND = 15.0
#: Fast health settings for tests: probes every fraction of a second.
FAST = {"host_cooldown": 0.3, "probe_max_interval": 1.0}


def counted_job(counter: Path, i: int, seconds: float) -> list[str]:
    return ["bash", "-c", f"echo x >> {counter}/{i}; sleep {seconds}"]


def host_of(job: Any) -> str:
    parsed = parse_jid(job.jid)
    return parsed[0] if parsed else ""


def ran_once(counter: Path, n: int) -> None:
    for i in range(n):
        assert read(counter / str(i)) == "x\n", f"job {i} ran {read(counter / str(i)).count('x')} times"


@pytest.fixture
def counter(tmp_path: Path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path


async def full_run(servers: dict[str, Any], wd: Path, counter: Path, n: int = 10,
                   seconds: float = 0.2, forks: int = 4, **opts: Any) -> Xqute:
    xq = Xqute("ssh", forks=forks, workdir=wd,
               scheduler_opts={"servers": servers, **FAST, **opts})
    for i in range(n):
        await xq.feed(counted_job(counter, i, seconds))
    async with asyncio.timeout(90):  # hang guard
        await xq.run_until_complete()
    assert [j.status for j in xq.jobs] == [JobStatus.FINISHED] * n, [
        read(j.stderr_file.path) for j in xq.jobs if j.status != JobStatus.FINISHED
    ]
    ran_once(counter, n)
    return xq


async def stopped_run(servers: dict[str, Any], wd: Path, counter: Path,
                      good: list[Any], forks: int = 2, n: int = 6,
                      how: str = "sigint", **opts: Any) -> float:
    """SIGINT (or ``how="cancel"``: the run's task cancelled) while
    ``forks`` jobs run: returns how long the stop took."""
    xq = Xqute("ssh", forks=forks, workdir=wd,
               scheduler_opts={"servers": servers, **FAST, **opts})
    for i in range(n):
        await xq.feed(counted_job(counter, i, 60))
    run = asyncio.create_task(xq.run_until_complete())
    # running: each has written its counter file (its first command)
    await wait_until(lambda: len(os.listdir(counter)) == forks or run.done(), timeout=60)
    assert not run.done(), [read(j.stderr_file.path) for j in xq.jobs]
    started = time.monotonic()
    if how == "cancel":
        run.cancel()
    else:
        os.kill(os.getpid(), signal.SIGINT)
    async with asyncio.timeout(60):  # hang guard; the bound is asserted below
        with contextlib.suppress(asyncio.CancelledError):
            await run
    took = time.monotonic() - started
    assert took < STOP_BOUND, took
    # the running jobs were killed and nothing else started after the stop
    assert sorted(await asyncio.to_thread(os.listdir, counter)) == [str(i) for i in range(forks)]
    assert [j.status for j in xq.jobs[:forks]] == [JobStatus.FAILED] * forks
    assert {j.status for j in xq.jobs[forks:]} == {JobStatus.QUEUED}
    for host in good:
        await nothing_left(host)
    return took


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"


async def nothing_left(host: Any) -> None:
    """No process of ours on ``host``: the login shells of closed connections
    take a moment to exit, so wait for them (bounded)."""
    try:
        await wait_until(lambda: host.job_pids() == [], timeout=10)
    except TimeoutError:
        left = {p: cmdline(p) for p in host.job_pids()}
        raise AssertionError(f"{host.name} still runs {left}") from None


@pytest.fixture
def silent_port() -> Iterator[int]:
    """Accepts TCP (the kernel does) and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def bad_spec(kind: str, cluster: Any, tmp_path: Path, silent: int) -> dict[str, Any]:
    other = cluster.hosts[1]
    spec = other.server_spec()
    if kind == "refused":
        return {**spec, "host": "127.0.0.1", "port": closed_port()}
    if kind == "silent":
        # long: proves that neither the jobs nor the stop wait for it
        return {**spec, "host": "127.0.0.1", "port": silent, "connect_timeout": 60}
    if kind == "auth":
        key = asyncssh.generate_private_key("ssh-ed25519")
        path = tmp_path / "stranger_key"
        key.write_private_key(str(path))
        path.chmod(0o600)
        return {**spec, "keyfile": str(path)}
    assert kind == "hostkey"
    known = tmp_path / "known_hosts_wrong"
    wrong_key = " ".join(cluster.hosts[0].host_key_pub.split()[:2])
    known.write_text(f"[{other.address}]:{other.port} {wrong_key}\n")
    return {**spec, "known_hosts": str(known)}


WHY = {
    "refused": "connection refused",
    "silent": "no SSH answer within 60s",
    "auth": "authentication failed",
    "hostkey": "host key CHANGED",
}


@pytest.mark.parametrize("kind", ["refused", "silent", "auth", "hostkey"])
async def test_one_bad_host(kind: str, sshd_cluster, tmp_path: Path, counter: Path,
                            silent_port: int, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="xqute_ssh")
    good = sshd_cluster.hosts[0]
    bad = bad_spec(kind, sshd_cluster, tmp_path, silent_port)
    servers = {"good": good.server_spec(), "bad": bad}
    await full_run(servers, tmp_path / "wd", counter)
    said = [r.getMessage() for r in caplog.records if "host " in r.getMessage()
            and str(bad["port"]) in r.getMessage()]
    if kind == "silent":
        assert said == []  # still connecting when the run ended: nobody waited
    else:
        assert len(said) == 1 and WHY[kind] in said[0], said  # once, not per job
        if kind in ("auth", "hostkey"):
            assert "unusable" in said[0]
            assert sshd_cluster.hosts[1].log_text().count("Connection from") <= 2
    stop_counter = tmp_path / "runs2"
    stop_counter.mkdir()
    how = "cancel" if kind in ("silent", "hostkey") else "sigint"
    await stopped_run(servers, tmp_path / "wd2", stop_counter, [good, sshd_cluster.hosts[1]],
                      how=how)


async def test_connect_timeout_message_is_the_time_it_took(silent_port: int) -> None:
    """'no SSH answer within 1s' took about 1 s, not one timeout per retry
    (it took 4 timeouts plus backoff: "within 10s" was ~42 s)."""
    cfg = HostConfig(host="127.0.0.1", port=silent_port, connect_timeout=1, known_hosts=None)
    started = time.monotonic()
    async with HostPool(cfg) as pool:
        with pytest.raises(SshConnectError, match=r"no SSH answer within 1s"):
            await pool.run("true")
    assert time.monotonic() - started < 3.0  # one attempt; 4 + backoff before


async def test_every_host_down_fails_fast_naming_each(sshd_cluster, tmp_path: Path,
                                                      silent_port: int, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="xqute_ssh")
    refused = bad_spec("refused", sshd_cluster, tmp_path, silent_port)
    auth = bad_spec("auth", sshd_cluster, tmp_path, silent_port)
    xq = Xqute("ssh", forks=4, workdir=tmp_path / "wd",
               scheduler_opts={"servers": {"r": refused, "a": auth}, **FAST})
    for _ in range(8):
        await xq.feed(["true"])
    async with asyncio.timeout(30):  # hang guard: it used to retry forever
        await xq.run_until_complete()
    assert {j.status for j in xq.jobs} == {JobStatus.FAILED}
    for job in xq.jobs:
        err = read(job.stderr_file.path)
        assert "every host is down" in err
        assert "connection refused" in err and "authentication failed" in err
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "every host is down" in errors[0], errors


async def test_sshd_killed_mid_run_and_restarted(sshd_cluster, tmp_path: Path,
                                                 counter: Path, caplog) -> None:
    """Jobs on the host run on (detached); new ones go to the other host;
    it comes back on its own and takes jobs again; each job runs once."""
    caplog.set_level(logging.WARNING, logger="xqute_ssh")
    good, victim = sshd_cluster.hosts
    servers = {"good": {**good.server_spec(), "forks": 3},
               "victim": {**victim.server_spec(), "forks": 3}}
    back_at: list[float] = []

    async def outage() -> None:
        await asyncio.sleep(1)
        await asyncio.to_thread(victim.kill_sshd)
        await asyncio.sleep(2)
        await victim.astart()
        back_at.append(time.time())

    task = asyncio.create_task(outage())
    # Enough jobs that the run outlasts the outage plus the probe backoff
    # (the good host alone takes ~6 s for them): the victim must be seen back.
    xq = await full_run(servers, tmp_path / "wd", counter, n=48, seconds=0.5, forks=6)
    await task
    messages = [m for m in (r.getMessage() for r in caplog.records)
                if m.startswith("host ") and victim.spec_string in m]
    assert [("is down" in m, "is back" in m) for m in messages] == [(True, False), (False, True)], messages
    # it took jobs again after it came back
    late = [j for j in xq.jobs if j.submitted_at and j.submitted_at > back_at[0]]
    assert any(host_of(j) == "victim" for j in late), [(host_of(j), j.submitted_at) for j in xq.jobs]
    # a stop while its sshd is down
    await asyncio.to_thread(victim.kill_sshd)
    stop_counter = tmp_path / "runs2"
    stop_counter.mkdir()
    await stopped_run(servers, tmp_path / "wd2", stop_counter, [good, victim])


async def test_network_cut_and_restored(sshd_cluster_factory, tmp_path: Path,
                                        counter: Path) -> None:
    cluster = sshd_cluster_factory(n=2, netns=True)
    good, victim = cluster.hosts
    tight = {"connect_timeout": 1, "keepalive_interval": 0.5, "keepalive_count_max": 2,
             "command_timeout": 3}
    servers = {"good": {**good.server_spec(), **tight, "forks": 3},
               "victim": {**victim.server_spec(), **tight, "forks": 3}}

    async def cut() -> None:
        await asyncio.sleep(1)
        await asyncio.to_thread(victim.cut_network)
        await asyncio.sleep(3)
        await asyncio.to_thread(victim.restore_network)

    task = asyncio.create_task(cut())
    await full_run(servers, tmp_path / "wd", counter, n=24, seconds=0.5, forks=6,
                   lost_after=60)
    await task
    # a stop while it is cut off
    await asyncio.to_thread(victim.cut_network)
    stop_counter = tmp_path / "runs2"
    stop_counter.mkdir()
    try:
        await stopped_run(servers, tmp_path / "wd2", stop_counter, [good, victim])
    finally:
        await asyncio.to_thread(victim.restore_network)


def test_cli_ctrl_c_with_a_refused_host_then_a_second_forces_exit(sshd_cluster,
                                                                  tmp_path: Path) -> None:
    """The report's case: `run` over a good host and a refused port, `sleep
    30`, SIGINT: exit 130 within seconds, nothing left, the host said down
    once.  Then jobs that ignore TERM (the stop waits the 5 s kill grace): a
    second SIGINT exits at once."""
    good = sshd_cluster.hosts[0]
    hosts = tmp_path / "hosts.toml"
    hosts.write_text(
        f"keyfile = {json.dumps(str(sshd_cluster.client_key))}\n"
        f"known_hosts = {json.dumps(str(sshd_cluster.known_hosts))}\n"
        f"[servers.good]\nhost = {json.dumps(good.address)}\nport = {good.port}\n"
        f"user = {json.dumps(good.user)}\n"
        f"[servers.dead]\nhost = \"127.0.0.1\"\nport = {closed_port()}\n"
        f"user = {json.dumps(good.user)}\n"
    )
    args = tmp_path / "args"
    args.write_text("".join(f"{i}\n" for i in range(6)))
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    env["PYTHONPATH"] = str(Path(__file__).parents[2])

    def start(wd: Path, *cmd: str, grace: str = "5") -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "xqute_ssh", "run", "--servers-file", str(hosts),
             "-j", "4", "-w", str(wd), "-a", str(args), "--kill-grace", grace,
             "--", *cmd],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )

    def wait_running(wd: Path, proc: subprocess.Popen[str], n: int) -> None:
        deadline = time.monotonic() + 60  # hang guard
        while sum((wd / str(i) / "job.status").exists()
                  and (wd / str(i) / "job.status").read_text().strip() == "4"
                  for i in range(6)) < n:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the jobs never started"
            time.sleep(0.05)

    wd = tmp_path / "wd"
    proc = start(wd, "sleep", "30")
    try:
        wait_running(wd, proc, 2)  # -j is spread: 2 slots on the good host
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert took < STOP_BOUND, took
    asyncio.run(nothing_left(good))  # the host-side kill helpers may still be exiting
    assert "Traceback" not in err
    both = " ".join((out + err).split())  # rich wraps long lines
    assert both.count("is down") == 1, both  # one line, not one per job
    assert "connection refused" in both
    status = subprocess.run([sys.executable, "-m", "xqute_ssh", "status", str(wd)],
                            capture_output=True, text=True, env=env, timeout=60)
    # on stderr: stdout is pure TSV (issue 14)
    assert re.search(r"host dead \(\S+\): down since [\d:]+: connection refused",
                     status.stderr), status.stderr

    wd = tmp_path / "wd-stubborn"
    # A kill grace far longer than the bound below: only the second Ctrl-C
    # can end the run in time (a loaded machine takes seconds to exit).
    proc = start(wd, "bash", "-c", "trap '' TERM; sleep 300", grace="120")
    lines: list[str] = []
    stopping = threading.Event()

    def read_err() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "received SIGINT: stopping" in line:
                stopping.set()

    reader = threading.Thread(target=read_err, daemon=True)
    reader.start()
    try:
        wait_running(wd, proc, 2)
        proc.send_signal(signal.SIGINT)
        # two signals sent back to back can merge into one: wait for the first
        assert stopping.wait(30), "".join(lines)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(10)
    err = "".join(lines)
    assert proc.returncode == 130, err
    assert took < 60, took  # the first stop alone waits the 120 s kill grace
    assert "again: exiting now" in err
