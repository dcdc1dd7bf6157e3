"""The SSH scheduler's essentials on every SSH server we support, each host a container.

OpenSSH 8.4 (bullseye), 9.2 (bookworm), 10.x (trixie) and Dropbear
(bookworm): launch, liveness, kill escalation, re-attach after a controller
restart, staging and outputs fetched back (a container never sees the
controller's workdir), and an sshd restart mid-run.  Plus a host with no bash.
``python -m pytest -m docker`` runs just these; see docs/testing.md.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from xqute_ssh import JobStatus, Xqute
from xqute_ssh.schedulers.ssh import parse_jid, unshared
from xqute_ssh.testing import SshCluster
from xqute_ssh.testing.images import MATRIX, NOBASH

from ..helpers import read

pytestmark = pytest.mark.docker


@pytest.fixture(params=MATRIX)
def server(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def servers(cluster: SshCluster, **extra: Any) -> dict[str, dict[str, Any]]:
    return {h.name: {**h.server_spec(), **extra} for h in cluster.hosts}


async def run(xq: Xqute, timeout: float = 120) -> None:
    async with asyncio.timeout(timeout):  # hang guard only
        await xq.run_until_complete()


def in_host(host: Any, script: str) -> str:
    """Run ``sh -c script`` in the host's container as its login user."""
    done = host.run(["sh", "-c", script])
    assert done.returncode == 0, done.stderr
    return str(done.stdout)


BIG_LINES = 400_000  # ~2.6 MB of output

AWKWARD = ["with space", "q'uote", '$(id) `id` $HOME', "é漢", ""]


async def test_jobs_run_and_outputs_come_back(sshd_cluster_factory, server, tmp_path: Path) -> None:
    cluster = sshd_cluster_factory(n=2, container=server)
    # 3 slots per host and jobs that overlap: both hosts must take some
    opts = {"servers": servers(cluster, forks=3)}
    xq = Xqute("ssh", forks=8, workdir=tmp_path / "wd", scheduler_opts=opts)
    code = 'printf "%s|" "$@"; echo "$V"; echo "to stderr" >&2; sleep 0.5; exit "$XQ_RC"'
    jobs = [
        await xq.feed(["bash", "-c", code, "_", *AWKWARD], envs={"V": "v'$x`y`", "XQ_RC": rc})
        for rc in (0, 3, 0, 0, 0, 3)
    ]
    await run(xq)
    assert [j.status for j in jobs] == [
        JobStatus.FAILED if i in (1, 5) else JobStatus.FINISHED for i in range(6)
    ], [read(j.stderr_file.path) for j in jobs]
    for j in jobs:
        assert read(j.stdout_file.path) == "|".join(AWKWARD) + "|v'$x`y`\n"
        assert read(j.stderr_file.path) == "to stderr\n"
    assert [await j.get_rc() for j in jobs] == [0, 3, 0, 0, 0, 3]
    assert {parse_jid(j.jid)[0] for j in jobs} == {"host1", "host2"}  # type: ignore[index]


async def test_stage_in_and_out(sshd_cluster_factory, server, tmp_path: Path) -> None:
    host = sshd_cluster_factory(n=1, container=server).hosts[0]
    data = tmp_path / "in 'put'.txt"
    data.write_bytes(b"line1\n\xff\n")
    result = tmp_path / "results" / "back.txt"
    xq = Xqute("ssh", workdir=tmp_path / "wd", scheduler_opts={"servers": {"c": host.server_spec()}})
    job = await xq.feed(
        ["bash", "-c", 'cat "$1" > "out put.txt"; echo more >> "out put.txt"', "_", data.name],
        stage_in=[data],
        stage_out={"out put.txt": str(result)},
    )
    # an output over the small-reply limit comes back in chunks
    big = await xq.feed(["bash", "-c", f"seq {BIG_LINES}; seq 3 >&2"])
    await run(xq)
    assert job.status == JobStatus.FINISHED, read(job.stderr_file.path)
    assert result.read_bytes() == b"line1\n\xff\nmore\n"
    assert big.status == JobStatus.FINISHED, read(big.stderr_file.path)
    expected = "".join(f"{i}\n" for i in range(1, BIG_LINES + 1)).encode()
    assert len(expected) > unshared.SMALL_OUTPUT
    assert big.stdout_file.path.read_bytes() == expected
    assert read(big.stderr_file.path) == "1\n2\n3\n"


async def test_a_job_killed_behind_our_back_is_failed(sshd_cluster_factory, server, tmp_path: Path) -> None:
    host = sshd_cluster_factory(n=1, container=server).hosts[0]
    opts = {"servers": {"c": host.server_spec()}, "poll_interval": 0.2}
    xq = Xqute("ssh", workdir=tmp_path / "wd", scheduler_opts=opts)
    job = await xq.feed(["bash", "-c", 'cut -d" " -f5 /proc/$$/stat > /tmp/xq-pgid; sleep 60'])

    async def kill_group() -> None:
        async with asyncio.timeout(60):
            while not in_host(host, "cat /tmp/xq-pgid 2>/dev/null || true").strip():
                await asyncio.sleep(0.1)
        in_host(host, 'kill -s KILL -- "-$(cat /tmp/xq-pgid)"')

    killer = asyncio.create_task(kill_group())
    await run(xq, timeout=90)
    await killer
    assert job.status == JobStatus.FAILED


async def test_timeout_escalates_to_kill_and_leaves_nothing(sshd_cluster_factory, server, tmp_path: Path) -> None:
    host = sshd_cluster_factory(n=1, container=server).hosts[0]
    opts = {"servers": {"c": host.server_spec()}, "timeout": 1, "kill_grace": 1}
    xq = Xqute("ssh", workdir=tmp_path / "wd", scheduler_opts=opts)
    job = await xq.feed(["bash", "-c", "(trap '' TERM; exec sleep 60) & sleep 60"])
    await run(xq)
    assert job.status == JobStatus.FAILED
    assert await job.get_rc() == 124, read(job.stderr_file.path)
    async with asyncio.timeout(15):  # the KILL comes kill_grace after the TERM
        while host.job_pids():
            await asyncio.sleep(0.1)


N_RESTART_JOBS = 48


async def test_server_restart_mid_run_every_job_once(sshd_cluster_factory, server, tmp_path: Path) -> None:
    cluster = sshd_cluster_factory(n=2, container=server)
    opts = {"servers": servers(cluster), "poll_interval": 0.1}
    xq = Xqute("ssh", forks=8, workdir=tmp_path / "wd", scheduler_opts=opts)
    # short jobs in waves, so the restart is likely to cut a launch in flight
    for i in range(N_RESTART_JOBS):
        await xq.feed(["bash", "-c", f"echo x >> /tmp/xq-runs-{i}; sleep 0.2; echo {i}"])

    async def restart_later() -> None:
        await asyncio.sleep(1.0)
        for h in cluster.hosts:
            await h.arestart()

    task = asyncio.create_task(restart_later())
    await run(xq, timeout=180)
    await task
    assert {j.status for j in xq.jobs} == {JobStatus.FINISHED}, [
        (j.index, read(j.stderr_file.path)) for j in xq.jobs if j.status != JobStatus.FINISHED
    ]
    runs = {
        i: "".join(in_host(h, f"cat /tmp/xq-runs-{i} 2>/dev/null || true") for h in cluster.hosts)
        for i in range(N_RESTART_JOBS)
    }
    assert {i: n for i, n in runs.items() if n != "x\n"} == {}, "a job ran twice, or not at all"
    for j in xq.jobs:
        assert read(j.stdout_file.path) == f"{j.index}\n"


CONTROLLER = """
import asyncio, json, sys
from xqute_ssh import Xqute
servers, workdir = json.loads(sys.argv[1]), sys.argv[2]
async def main():
    xq = Xqute("ssh", forks=4, workdir=workdir, scheduler_opts={"servers": servers})
    for i in range(4):
        await xq.feed(["bash", "-c", "echo x >> /tmp/xq-started-$1; sleep 3; echo done $1", "_", str(i)])
    await xq.run_until_complete()
    print(json.dumps([j.status.name for j in xq.jobs]))
asyncio.run(main())
"""


async def test_controller_sigkill_then_restart_reattaches(sshd_cluster_factory, server, tmp_path: Path) -> None:
    host = sshd_cluster_factory(n=1, container=server).hosts[0]
    script = tmp_path / "ctl.py"
    script.write_text(CONTROLLER)
    args = [sys.executable, str(script), json.dumps({"c": host.server_spec()}), str(tmp_path / "wd")]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        async with asyncio.timeout(60):  # hang guard: all four started
            while in_host(host, "cat /tmp/xq-started-* 2>/dev/null | wc -l").strip() != "4":
                assert first.poll() is None, first.stderr.read() if first.stderr else ""
                await asyncio.sleep(0.1)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    second = await asyncio.create_subprocess_exec(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    async with asyncio.timeout(90):
        out, err = await second.communicate()
    assert second.returncode == 0, err.decode()
    assert json.loads(out.decode().splitlines()[-1]) == ["FINISHED"] * 4
    assert in_host(host, "cat /tmp/xq-started-*") == "x\n" * 4, "a job ran twice"
    for i in range(4):
        assert read(tmp_path / "wd" / str(i) / "job.stdout") == f"done {i}\n"


async def test_host_without_bash_gets_a_clear_error(sshd_cluster_factory, tmp_path: Path) -> None:
    host = sshd_cluster_factory(n=1, container=NOBASH).hosts[0]
    assert host.run(["sh", "-c", "command -v bash || echo none"]).stdout.strip() == "none"
    xq = Xqute("ssh", workdir=tmp_path / "wd", scheduler_opts={"servers": {"c": host.server_spec()}})
    job = await xq.feed(["echo", "hi"])
    await run(xq, timeout=60)  # must end, not hang
    assert job.status == JobStatus.FAILED
    err = read(job.stderr_file.path)
    assert "bash" in err and "4.3" in err, err
