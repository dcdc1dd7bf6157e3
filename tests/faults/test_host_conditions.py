"""Host conditions that must neither run a job twice nor crash the run:
sshd down longer than ``lost_after`` (fencing), no SFTP subsystem, a
read-only workdir, BASH_ENV, background processes a job leaves behind."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from xqute_ssh import JobStatus, Xqute
from xqute_ssh.schedulers.ssh import parse_jid

from ..helpers import read, wait_until


async def run(xq: Xqute, timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):  # hang guard only
        await xq.run_until_complete()


def gated_job(markers: Path, i: int) -> list[str]:
    """Runs until the test creates ``markers/go`` (at most 60 s)."""
    return [
        "bash", "-c",
        'echo start >> "$1"; for _ in $(seq 600); do [ -e "$2" ] && break; sleep 0.1; done; '
        'echo end >> "$1"',
        "_", str(markers / str(i)), str(markers / "go"),
    ]


def servers(cluster: Any, **extra: Any) -> dict[str, dict[str, Any]]:
    return {h.name: {**h.server_spec(), **extra} for h in cluster.hosts}


# ------------------------------------------------------------------ fencing
async def test_sshd_down_longer_than_lost_after_jobs_not_rerun(
    sshd_cluster_factory: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Shared workdir, retry strategy: host1's sshd is down for 3x lost_after
    while its jobs run on.  Their heartbeats go on, so they are waited for,
    never started elsewhere, and end FINISHED (their own status files)."""
    cluster = sshd_cluster_factory(n=2)
    markers = tmp_path / "markers"
    markers.mkdir()
    xq = Xqute(
        "ssh", forks=4, workdir=tmp_path / "wd", error_strategy="retry",
        scheduler_opts={
            "servers": servers(cluster, forks=2, connect_retries=0), "lost_after": 1.5
        },
    )
    for i in range(4):
        await xq.feed(gated_job(markers, i))
    caplog.set_level(logging.WARNING, logger="xqute_ssh")
    task = asyncio.create_task(run(xq))
    await wait_until(lambda: len(list(markers.iterdir())) == 4, 30, "all started")
    down = cluster.hosts[0]
    await asyncio.to_thread(down.kill_sshd)
    await asyncio.sleep(6)  # the fault: sshd down for 4 x lost_after
    await down.astart()
    (markers / "go").touch()
    await task
    assert [j.status for j in xq.jobs] == [JobStatus.FINISHED] * 4
    assert {read(markers / str(i)) for i in range(4)} == {"start\nend\n"}
    assert {parse_jid(j.jid)[0] for j in xq.jobs} == {"host1", "host2"}  # type: ignore[index]
    assert "heartbeats of 2 of its jobs go on" in caplog.text


async def test_unshared_host_unreachable_job_fenced_then_settled(
    sshd_cluster_factory: Any, tmp_path: Path
) -> None:
    """No shared workdir, nothing can tell whether the job still runs: after
    lost_after it is given up (the run ends) but never started elsewhere,
    even under "retry"; a later run on the workdir asks the host again and
    reports the job's real end."""
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    cluster = sshd_cluster_factory(n=2, private_dirs=(str(hidden),))
    markers = tmp_path / "markers"  # outside the private dir: seen by all
    markers.mkdir()
    opts = {"servers": servers(cluster, connect_retries=0), "lost_after": 1}
    xq = Xqute("ssh", workdir=hidden / "wd", error_strategy="retry", scheduler_opts=opts)
    job = await xq.feed(gated_job(markers, 0))
    task = asyncio.create_task(run(xq))
    await wait_until(lambda: (markers / "0").exists(), 30, "started")
    name = parse_jid(job.jid or (await job.get_jid()))[0]  # type: ignore[index]
    host = next(h for h in cluster.hosts if h.name == name)
    await asyncio.to_thread(host.kill_sshd)
    await task
    assert job.status == JobStatus.FAILED
    assert "not started elsewhere" in read(job.stderr_file.path)
    assert read(markers / "0") == "start\n"  # not retried on the other host

    await host.astart()
    (markers / "go").touch()
    await wait_until(lambda: read(markers / "0") == "start\nend\n", 30, "job ended")
    again = Xqute("ssh", workdir=hidden / "wd", error_strategy="retry", scheduler_opts=opts)
    job2 = await again.feed(gated_job(markers, 0))
    await run(again)
    assert job2.status == JobStatus.FINISHED
    assert await job2.get_rc() == 0
    assert read(markers / "0") == "start\nend\n"


# ------------------------------------------------------------------ no SFTP
async def test_host_without_sftp_and_workdir_brings_outputs_back(
    sshd_cluster_factory: Any, tmp_path: Path
) -> None:
    """sshd without a 'Subsystem sftp' line: large outputs stream back over
    an exec channel; staging (which needs SFTP) fails the job naming the
    host and the subsystem; siblings finish, nothing crashes."""
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    cluster = sshd_cluster_factory(
        n=1, private_dirs=(str(hidden),), sshd_config=("Subsystem nosuch /bin/false",)
    )
    xq = Xqute("ssh", forks=4, workdir=hidden / "wd",
               scheduler_opts={"servers": servers(cluster)})
    big = await xq.feed([sys.executable, "-c", "import sys; sys.stdout.write('x' * 2_000_000)"])
    small = [await xq.feed(["bash", "-c", f"sleep 0.5; echo small {i}"]) for i in range(3)]
    src = tmp_path / "in.txt"
    src.write_text("data\n")
    staged = await xq.feed(["cat", "in.txt"], stage_in=[str(src)])
    await run(xq)
    assert big.status == JobStatus.FINISHED, read(big.stderr_file.path)
    assert big.stdout_file.path.read_bytes() == b"x" * 2_000_000
    for i, job in enumerate(small):
        assert job.status == JobStatus.FINISHED
        assert read(job.stdout_file.path) == f"small {i}\n"
    assert staged.status == JobStatus.FAILED
    err = read(staged.stderr_file.path)
    assert cluster.hosts[0].spec_string.split("@")[-1] in err and "SFTP subsystem" in err


# ------------------------------------------------------------ read-only workdir
async def test_read_only_workdir_on_one_host_is_detected_once(
    sshd_cluster_factory: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """host1 sees the workdir through a read-only bind mount (in its own
    mount namespace).  The probe's write finds it before any job goes
    there, says so once with the cause, and host1's jobs run in a remote
    directory instead: every job FINISHED with its output."""
    elsewhere = tmp_path / "elsewhere"  # only to give the hosts mount namespaces
    elsewhere.mkdir()
    cluster = sshd_cluster_factory(n=2, private_dirs=(str(elsewhere),))
    wd = tmp_path / "wd"
    wd.mkdir()
    ro = cluster.hosts[0]
    for argv in (["mount", "--bind", str(wd), str(wd)],
                 ["mount", "-o", "remount,bind,ro", str(wd)]):
        done = ro.run(argv)
        assert done.returncode == 0, done.stderr
    assert ro.run(["touch", str(wd / "probe")]).returncode != 0  # it is read-only
    caplog.set_level(logging.WARNING, logger="xqute_ssh")
    xq = Xqute("ssh", forks=8, workdir=wd, scheduler_opts={"servers": servers(cluster, forks=4)})
    for i in range(8):
        await xq.feed(["bash", "-c", f"sleep 0.3; echo out {i}"])
    await run(xq)
    assert [j.status for j in xq.jobs] == [JobStatus.FINISHED] * 8
    assert [read(j.stdout_file.path) for j in xq.jobs] == [f"out {i}\n" for i in range(8)]
    warnings = [r.getMessage() for r in caplog.records if "cannot write" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert f"{ro.address}:{ro.port}" in warnings[0]
    assert "Read-only file system" in warnings[0]

    # shared_fs=True on that host: it is not used at all; the other host runs all
    spec = servers(cluster, forks=4)
    spec["host1"]["shared_fs"] = True
    xq2 = Xqute("ssh", forks=8, workdir=wd, scheduler_opts={"servers": spec, "resume": False})
    for i in range(8):
        await xq2.feed(["bash", "-c", f"sleep 0.3; echo out {i}"])
    await run(xq2)
    assert [j.status for j in xq2.jobs] == [JobStatus.FINISHED] * 8
    assert {parse_jid(j.jid)[0] for j in xq2.jobs} == {"host2"}  # type: ignore[index]


# ------------------------------------------------------------------ BASH_ENV
async def test_bash_env_output_appears_once(sshd_cluster_factory: Any, tmp_path: Path) -> None:
    """A host whose sessions have BASH_ENV set: the job's stdout gets its
    output once, as with plain ``ssh host cmd``."""
    benv = tmp_path / "bash_env"
    benv.write_text("echo from-bash-env\n")
    cluster = sshd_cluster_factory(
        n=1, sshd_config=(f"SetEnv PYENV_REHASH_TIMEOUT=1 BASH_ENV={benv}",)
    )
    xq = Xqute("ssh", workdir=tmp_path / "wd", scheduler_opts={"servers": servers(cluster)})
    shell = await xq.feed("echo job")
    argv = await xq.feed(["bash", "-c", "echo job"])
    await run(xq)
    assert read(shell.stdout_file.path) == "from-bash-env\njob\n"
    assert read(argv.stdout_file.path) == "from-bash-env\njob\n"


async def test_bash_env_once_locally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    benv = tmp_path / "bash_env"
    benv.write_text("echo from-bash-env\n")
    monkeypatch.setenv("BASH_ENV", str(benv))
    xq = Xqute(workdir=tmp_path / "wd")
    job = await xq.feed("echo job")
    await run(xq)
    assert read(job.stdout_file.path) == "from-bash-env\njob\n"


# ------------------------------------------------------- leftover processes
@pytest.mark.parametrize("kill", [False, True])
async def test_background_process_left_by_a_job(tmp_path: Path, kill: bool) -> None:
    """By default a job's background process outlives it (as with plain
    ssh); with kill_group_on_end it is killed when the job ends."""
    pid_file = tmp_path / "bg.pid"
    xq = Xqute(workdir=tmp_path / "wd", scheduler_opts={"kill_group_on_end": kill})
    job = await xq.feed(["bash", "-c", 'sleep 60 & echo $! > "$1"', "_", str(pid_file)])
    await run(xq)
    assert job.status == JobStatus.FINISHED
    pid = int(read(pid_file))

    def alive() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"

    try:
        if kill:
            await wait_until(lambda: not alive(), 10, "background process killed")
        else:
            assert alive()
    finally:
        if alive():
            os.kill(pid, 9)
