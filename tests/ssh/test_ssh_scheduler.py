"""SshScheduler against real OpenSSH sshd hosts from the harness."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from xqute_ssh import ConfigError, JobStatus, Xqute
from xqute_ssh.schedulers.ssh import SshScheduler, parse_jid

from ..helpers import assert_gone, pids_with, read

AWKWARD = [
    "with space",
    "q'uote",
    'd"q',
    "$HOME",
    "`id`",
    "$(id)",
    "a;b|c&d",
    "b\\s",
    "é漢",
    "",
    "x\ny",
]


def servers(cluster: Any, **extra: Any) -> dict[str, dict[str, Any]]:
    return {h.name: {**h.server_spec(), **extra} for h in cluster.hosts}


async def run(xq: Xqute, timeout: float = 90) -> None:
    async with asyncio.timeout(timeout):  # hang guard only
        await xq.run_until_complete()


def host_of(job: Any) -> str:
    parsed = parse_jid(job.jid or read(job.jid_file.path).strip())
    assert parsed is not None
    return parsed[0]


async def test_jobs_spread_over_hosts_and_finish(sshd_cluster, tmp_path: Path) -> None:
    xq = Xqute(
        "ssh",
        forks=8,
        workdir=tmp_path / "wd",
        scheduler_opts={"servers": servers(sshd_cluster)},
    )
    for i in range(24):
        await xq.feed(
            ["bash", "-c", 'echo "$1 $XQUTE_JOB_INDEX"; sleep 0.2', "_", str(i)]
        )
    await run(xq)
    assert {j.status for j in xq.jobs} == {JobStatus.FINISHED}
    for j in xq.jobs:
        assert read(j.stdout_file.path) == f"{j.index} {j.index}\n"
    used = {host_of(j) for j in xq.jobs}
    assert used == {h.name for h in sshd_cluster.hosts}


async def test_bytes_reach_the_job_over_ssh(sshd_cluster, tmp_path: Path) -> None:
    xq = Xqute(
        "ssh", workdir=tmp_path, scheduler_opts={"servers": servers(sshd_cluster)}
    )
    code = "import json,os,sys; print(json.dumps([sys.argv[1:], os.environ['V']]))"
    job = await xq.feed(
        [sys.executable, "-c", code, *AWKWARD], envs={"V": "$(x) `y` 'z' \"w\""}
    )
    nf = await xq.feed(["no-such-command-xq"])
    await run(xq)
    assert job.status == JobStatus.FINISHED, read(job.stderr_file.path)
    assert json.loads(read(job.stdout_file.path)) == [AWKWARD, "$(x) `y` 'z' \"w\""]
    assert nf.status == JobStatus.FAILED
    assert await nf.get_rc() == 127


async def test_per_host_forks_under_max_sessions_2(
    sshd_cluster_factory, tmp_path: Path
) -> None:
    cluster = sshd_cluster_factory(
        n=2, sshd_config=("MaxSessions 2", "MaxStartups 2:30:10")
    )
    opts = {"servers": servers(cluster, forks=2, max_sessions=2)}
    xq = Xqute("ssh", forks=16, workdir=tmp_path, scheduler_opts=opts)
    for _ in range(16):
        await xq.feed(["bash", "-c", "date +%s.%N; sleep 0.3; date +%s.%N"])
    await run(xq)
    assert {j.status for j in xq.jobs} == {JobStatus.FINISHED}
    per_host: dict[str, list[tuple[float, float]]] = {}
    for j in xq.jobs:
        start, end = map(float, read(j.stdout_file.path).split())
        per_host.setdefault(host_of(j), []).append((start, end))
    for spans in per_host.values():
        events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
        level = peak = 0
        for _, d in events:
            level += d
            peak = max(peak, level)
        assert peak <= 2


async def test_timeout_and_kill_leave_nothing_running(
    sshd_cluster, tmp_path: Path
) -> None:
    marker = f"xq-ssh-kill-{os.getpid()}"
    opts = {"servers": servers(sshd_cluster), "timeout": 1, "kill_grace": 1}
    xq = Xqute("ssh", forks=4, workdir=tmp_path, scheduler_opts=opts)
    job = await xq.feed(
        ["bash", "-c", f"(trap '' TERM; exec -a {marker} sleep 60) & sleep 60"]
    )
    await run(xq)
    assert job.status == JobStatus.FAILED
    assert await job.get_rc() == 124, read(job.stderr_file.path)
    await assert_gone(marker)


async def test_halt_kills_running_jobs_on_hosts(sshd_cluster, tmp_path: Path) -> None:
    marker = f"xq-ssh-halt-{os.getpid()}"
    opts = {"servers": servers(sshd_cluster)}
    xq = Xqute(
        "ssh", forks=4, workdir=tmp_path, error_strategy="halt", scheduler_opts=opts
    )
    runners = [
        await xq.feed(["bash", "-c", f"(exec -a {marker} sleep 60) & wait"])
        for _ in range(3)
    ]

    await xq.feed(["bash", "-c", "sleep 1; exit 1"])
    await run(xq, timeout=60)
    assert [j.status for j in runners] == [JobStatus.FAILED] * 3
    assert pids_with(marker) == []


async def test_unreachable_host_is_skipped(sshd_cluster, tmp_path: Path) -> None:
    good = sshd_cluster.hosts[0]
    dead = {**good.server_spec(), "port": _closed_port(), "connect_retries": 0}
    opts = {"servers": {"dead": dead, "good": good.server_spec()}}
    xq = Xqute("ssh", forks=4, workdir=tmp_path, scheduler_opts=opts)
    for _ in range(6):
        await xq.feed(["true"])
    await run(xq)
    assert {j.status for j in xq.jobs} == {JobStatus.FINISHED}
    assert {host_of(j) for j in xq.jobs} == {"good"}


async def test_unknown_host_key_is_refused(sshd_cluster, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    spec = {**sshd_cluster.hosts[0].server_spec(), "known_hosts": str(empty)}
    xq = Xqute("ssh", workdir=tmp_path / "wd", scheduler_opts={"servers": {"h": spec}})
    job = await xq.feed(["true"])
    await run(xq)
    assert job.status == JobStatus.FAILED
    err = read(job.stderr_file.path)
    assert "host key" in err.lower()
    assert "ssh-keyscan" in err


async def test_sshd_restart_mid_run_all_jobs_complete(
    sshd_cluster, tmp_path: Path
) -> None:
    opts = {"servers": servers(sshd_cluster), "poll_interval": 0.1}
    xq = Xqute("ssh", forks=8, workdir=tmp_path, scheduler_opts=opts)
    counter = tmp_path / "runs"
    counter.mkdir()
    for i in range(24):
        await xq.feed(["bash", "-c", f"echo x >> {counter}/{i}; sleep 0.5"])

    async def restart_later() -> None:
        await asyncio.sleep(1.0)
        for h in sshd_cluster.hosts:
            await asyncio.to_thread(h.restart)

    task = asyncio.create_task(restart_later())
    await run(xq, timeout=120)
    await task
    assert {j.status for j in xq.jobs} == {JobStatus.FINISHED}, [
        (j.index, j.status, read(j.stderr_file.path))
        for j in xq.jobs
        if j.status != JobStatus.FINISHED
    ]
    for i in range(24):
        assert read(counter / str(i)) == "x\n", f"job {i} ran more than once"


CONTROLLER = """
import asyncio, json, sys
from xqute_ssh import Xqute
servers, workdir, counter = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
async def main():
    xq = Xqute("ssh", forks=8, workdir=workdir, scheduler_opts={"servers": servers})
    for i in range(6):
        await xq.feed(["bash", "-c", f"echo x >> {counter}/{i}; sleep 3"])
    await xq.run_until_complete()
    print(json.dumps([j.status.name for j in xq.jobs]))
asyncio.run(main())
"""


async def test_controller_sigkill_and_restart_runs_no_job_twice(
    sshd_cluster, tmp_path: Path
) -> None:
    script = tmp_path / "controller.py"
    script.write_text(CONTROLLER)
    counter = tmp_path / "runs"
    counter.mkdir()
    args = [
        sys.executable,
        str(script),
        json.dumps(servers(sshd_cluster)),
        str(tmp_path / "wd"),
        str(counter),
    ]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(list(counter.iterdir())) < 6:  # hang guard: every job started
        assert time.monotonic() < deadline, (
            first.stderr.read() if first.poll() is not None else "timeout"
        )
        await asyncio.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = await asyncio.create_subprocess_exec(
        *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    async with asyncio.timeout(90):
        out, err = await second.communicate()
    assert second.returncode == 0, err.decode()
    assert json.loads(out.decode().splitlines()[-1]) == ["FINISHED"] * 6
    for i in range(6):
        assert read(counter / str(i)) == "x\n", f"job {i} ran twice: {err.decode()[-3000:]}"


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "unshared"])
async def test_rerun_with_more_ended_jobs_than_slots_starts_the_new_ones(
    sshd_cluster_factory: Any, tmp_path: Path, shared: bool
) -> None:
    """Jobs a rerun finds ended (reported, not run again) must not keep
    the slots they held: with more of them than slots, the new job waited
    for a slot for ever (seen after two controller deaths in a row)."""
    if shared:
        cluster = sshd_cluster_factory(n=1)
        workdir = tmp_path / "wd"
    else:
        hidden = tmp_path / "hidden"
        hidden.mkdir()
        cluster = sshd_cluster_factory(n=1, private_dirs=(str(hidden),))
        workdir = hidden / "wd"

    def make() -> Xqute:
        return Xqute(
            "ssh",
            forks=2,
            workdir=workdir,
            scheduler_opts={"servers": servers(cluster)},
        )

    first = make()
    for i in range(4):
        await first.feed(["echo", str(i)])
    await run(first)
    second = make()
    for i in range(5):  # the first four ended already; the fifth is new
        await second.feed(["echo", str(i)])
    await run(second, timeout=60)  # hang guard: hung here before the fix
    assert [j.status for j in second.jobs] == [JobStatus.FINISHED] * 5
    assert [read(j.stdout_file.path) for j in second.jobs] == [f"{i}\n" for i in range(5)]


def test_bad_configuration_is_rejected_before_running(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs servers"):
        SshScheduler(workdir=tmp_path)
    with pytest.raises(ConfigError, match="port"):
        SshScheduler(workdir=tmp_path, servers=["user@host:99999"])
    with pytest.raises(ConfigError, match="'forkz'"):
        SshScheduler(workdir=tmp_path, servers={"a": {"forkz": 2}})
    with pytest.raises(ConfigError, match="bad host"):
        SshScheduler(workdir=tmp_path, servers={"a": {"host": "bad host"}})
    with pytest.raises(ConfigError, match="forks"):
        SshScheduler(workdir=tmp_path, servers={"a": {"forks": 0}})


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_jobs_started_in_batches_each_get_their_own_job_id(
    sshd_cluster, tmp_path: Path
) -> None:
    """Many launches at once go out in batches (launcher.py): every job's id
    names its own wrapper (the pid its job.pid records), never a neighbour's."""
    xq = Xqute(
        "ssh",
        forks=48,
        workdir=tmp_path / "wd",
        scheduler_opts={"servers": servers(sshd_cluster)},
    )
    for i in range(96):
        await xq.feed(["sh", "-c", f"echo {i}"])
    await run(xq)
    pids = set()
    for job in xq.jobs:
        assert job.status == JobStatus.FINISHED
        assert read(job.stdout_file.path) == f"{job.index}\n"
        parsed = parse_jid(job.jid)
        assert parsed is not None
        wrapper_pid = int(read(job.metadir.path / "job.pid").split()[0])
        assert parsed[1] == wrapper_pid
        pids.add((parsed[0], wrapper_pid))
    assert len(pids) == 96


_BEAT_JOB = r"""
import os, sys, time
pid_file = sys.argv[1]
first = os.stat(pid_file).st_mtime_ns
deadline = time.monotonic() + 60  # hang guard only
while os.stat(pid_file).st_mtime_ns == first:
    if time.monotonic() > deadline:
        sys.exit(3)
    time.sleep(0.05)
sid = os.getsid(0)
names = []
for entry in os.listdir("/proc"):
    if entry.isdigit():
        try:
            if os.getsid(int(entry)) == sid:
                with open(f"/proc/{entry}/comm") as fh:
                    names.append(fh.read().strip())
        except OSError:
            pass
print(" ".join(sorted(names)))
"""


async def test_heartbeat_beats_without_a_sleep_process(sshd_cluster, tmp_path: Path) -> None:
    """The job's heartbeat (job.pid's mtime) goes on while it runs, from one
    forked wrapper shell: no sleep or sh beside the wrapper and the job."""
    xq = Xqute(
        "ssh",
        forks=1,
        workdir=tmp_path / "wd",
        scheduler_opts={"servers": servers(sshd_cluster), "lost_after": 3},
    )
    job = await xq.feed([sys.executable, "-c", _BEAT_JOB, str(tmp_path / "wd" / "0" / "job.pid")])
    await run(xq)
    assert job.status == JobStatus.FINISHED, read(job.stderr_file.path)
    names = read(job.stdout_file.path).split()
    # the wrapper and its heartbeat fork (both bash), and the job itself
    assert sorted(names) == ["bash", "bash", Path(sys.executable).name[:15]], names
