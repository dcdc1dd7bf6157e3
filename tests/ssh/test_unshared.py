"""Hosts that cannot see the workdir: remote job dirs, outputs fetched back."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

import pytest

from xqute_ssh import JobStatus, Xqute
from xqute_ssh.schedulers.ssh import parse_jid
from xqute_ssh.schedulers.ssh.unshared import default_remote_workdir

from ..helpers import read


async def run(xq: Xqute, timeout: float = 120) -> None:
    async with asyncio.timeout(timeout):  # hang guard only
        await xq.run_until_complete()


def private_cluster(factory: Any, tmp_path: Path, n: int = 1) -> tuple[Any, Path]:
    """Hosts with a private tmpfs over the workdir's parent: they cannot see it."""
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    cluster = factory(n=n, private_dirs=(str(hidden),))
    return cluster, hidden / "wd"


async def test_private_host_runs_jobs_and_outputs_arrive(sshd_cluster_factory, tmp_path: Path) -> None:
    cluster, workdir = private_cluster(sshd_cluster_factory, tmp_path)
    host = cluster.hosts[0]
    xq = Xqute("ssh", forks=4, workdir=workdir, scheduler_opts={"servers": {"p": host.server_spec()}})
    code = "import os,sys; sys.stdout.buffer.write(b'\\xff\\xfe' + sys.argv[1].encode()); print(os.getcwd(), file=sys.stderr); sys.exit(int(sys.argv[2]))"
    ok = await xq.feed([sys.executable, "-c", code, "out 'q' $x", "0"])
    bad = await xq.feed([sys.executable, "-c", code, "boom", "3"])
    await run(xq)
    assert ok.status == JobStatus.FINISHED, read(ok.stderr_file.path)
    assert ok.stdout_file.path.read_bytes() == b"\xff\xfeout 'q' $x"
    assert bad.status == JobStatus.FAILED and await bad.get_rc() == 3
    assert bad.stdout_file.path.read_bytes() == b"\xff\xfeboom"
    # the host never saw the local workdir: the wrapper ran from its own dir
    listing = host.run(["ls", str(workdir)])
    assert listing.returncode != 0
    # remote job directories are removed after the fetch
    home = host.run(["sh", "-c", "echo $HOME"]).stdout.strip()
    root = default_remote_workdir(home, str(workdir))
    left = host.run(["sh", "-c", f"ls -A {root} | wc -l"])
    assert left.stdout.strip() == "0"


async def test_shared_and_unshared_hosts_in_one_run(sshd_cluster_factory, sshd_cluster, tmp_path: Path) -> None:
    private, workdir = private_cluster(sshd_cluster_factory, tmp_path)
    shared = sshd_cluster.hosts[0]
    servers = {"private": private.hosts[0].server_spec(), "shared": shared.server_spec()}
    xq = Xqute("ssh", forks=8, workdir=workdir, scheduler_opts={"servers": servers})
    for i in range(16):
        await xq.feed(["bash", "-c", 'echo "job $1"; sleep 0.2', "_", str(i)])
    await run(xq)
    assert {j.status for j in xq.jobs} == {JobStatus.FINISHED}
    assert {parse_jid(j.jid)[0] for j in xq.jobs} == {"private", "shared"}  # type: ignore[index]
    for j in xq.jobs:
        assert read(j.stdout_file.path) == f"job {j.index}\n"


async def test_100mb_stdout_arrives_intact_without_growing_memory(sshd_cluster_factory, tmp_path: Path) -> None:
    cluster, workdir = private_cluster(sshd_cluster_factory, tmp_path)
    xq = Xqute("ssh", workdir=workdir, scheduler_opts={"servers": {"p": cluster.hosts[0].server_spec()}})
    # 100 MB of a repeating, non-trivial pattern, checksummed on the host
    gen = "import sys,hashlib; b=bytes(range(256))*4096; h=hashlib.sha256(); o=sys.stdout.buffer\nfor _ in range(100): o.write(b); h.update(b)\nsys.stderr.write(h.hexdigest())"
    job = await xq.feed([sys.executable, "-c", gen])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    await run(xq, timeout=300)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert job.status == JobStatus.FINISHED, read(job.stderr_file.path)
    digest = hashlib.sha256(job.stdout_file.path.read_bytes()).hexdigest()
    assert job.stdout_file.path.stat().st_size == 100 * 256 * 4096
    assert read(job.stderr_file.path) == digest
    assert (after - before) * 1024 < 50 * 1024 * 1024  # KiB -> bytes; nowhere near 100 MB


CONTROLLER = """
import asyncio, json, sys
from xqute_ssh import Xqute
servers, workdir, marker = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
async def main():
    xq = Xqute("ssh", forks=4, workdir=workdir, scheduler_opts={"servers": servers})
    for i in range(4):
        await xq.feed(["bash", "-c", f"echo started >> {marker}$1; sleep 2; echo done", "_", str(i)])
    await xq.run_until_complete()
    print(json.dumps([j.status.name for j in xq.jobs]))
asyncio.run(main())
"""


async def test_restart_reattaches_unshared_jobs(sshd_cluster_factory, tmp_path: Path) -> None:
    import signal
    import subprocess

    cluster, workdir = private_cluster(sshd_cluster_factory, tmp_path)
    host = cluster.hosts[0]
    marker = f"/tmp/xq-unshared-runs-{os.getpid()}-{tmp_path.name}-"
    host.run(["sh", "-c", f"rm -f {marker}*"])
    script = tmp_path / "ctl.py"
    script.write_text(CONTROLLER)
    args = [sys.executable, str(script), json.dumps({"p": host.server_spec()}), str(workdir), marker]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    async with asyncio.timeout(60):
        while host.run(["sh", "-c", f"cat {marker}* 2>/dev/null | wc -l"]).stdout.strip() != "4":
            await asyncio.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = await asyncio.create_subprocess_exec(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    async with asyncio.timeout(90):
        out, err = await second.communicate()
    assert second.returncode == 0, err.decode()
    assert json.loads(out.decode().splitlines()[-1]) == ["FINISHED"] * 4
    counts = host.run(["sh", "-c", f"cat {marker}* | wc -l"]).stdout.strip()
    host.run(["sh", "-c", f"rm -f {marker}*"])
    assert counts == "4", "a job ran twice"
    for i in range(4):
        assert read(workdir / str(i) / "job.stdout") == "done\n"


async def test_restart_after_a_cut_status_write_reports_the_end(
    sshd_cluster_factory, tmp_path: Path
) -> None:
    """A controller killed while writing a job's status left it empty here;
    the job ended on its host meanwhile.  The next controller must fetch
    and report that end, not start the job again (it used to: it ran
    twice)."""
    import signal
    import subprocess

    cluster, workdir = private_cluster(sshd_cluster_factory, tmp_path)
    host = cluster.hosts[0]
    marker = f"/tmp/xq-unshared-cut-{os.getpid()}-{tmp_path.name}-"
    host.run(["sh", "-c", f"rm -f {marker}*"])
    script = tmp_path / "ctl.py"
    script.write_text(
        CONTROLLER.replace("sleep 2; echo done", "sleep 1; echo done; echo ended >> {marker}$1")
    )
    args = [sys.executable, str(script), json.dumps({"p": host.server_spec()}), str(workdir), marker]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    count = f"cat {marker}* 2>/dev/null | wc -l"
    async with asyncio.timeout(60):  # hang guard: all four started
        while host.run(["sh", "-c", count]).stdout.strip() != "4":
            await asyncio.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first.wait()
    for i in range(4):  # what a kill mid-write of the status left
        (workdir / str(i) / "job.status").write_text("")
    async with asyncio.timeout(60):  # hang guard: all four ended on the host
        while host.run(["sh", "-c", count]).stdout.strip() != "8":
            await asyncio.sleep(0.1)
    second = await asyncio.create_subprocess_exec(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    async with asyncio.timeout(90):
        out, err = await second.communicate()
    runs = host.run(["sh", "-c", f"grep -c started {marker}* | cut -d: -f2"]).stdout.split()
    host.run(["sh", "-c", f"rm -f {marker}*"])
    assert second.returncode == 0, err.decode()
    assert runs == ["1"] * 4, f"started this often: {runs}"
    assert json.loads(out.decode().splitlines()[-1]) == ["FINISHED"] * 4
    for i in range(4):
        assert read(workdir / str(i) / "job.stdout") == "done\n"


async def test_stage_in_and_out_over_ssh(sshd_cluster_factory, tmp_path: Path) -> None:
    """GNU parallel's --transfer / --return: names with spaces and quotes."""
    cluster, workdir = private_cluster(sshd_cluster_factory, tmp_path)
    data = tmp_path / "in 'put' \"x\".txt"
    data.write_bytes(b"line1\n\xff\n")
    folder = tmp_path / "a dir"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "f g").write_text("deep\n")
    result = tmp_path / "results" / "back 'here'.txt"
    xq = Xqute("ssh", workdir=workdir, scheduler_opts={"servers": {"p": cluster.hosts[0].server_spec()}})
    job = await xq.feed(
        ["bash", "-c", 'cat "$1" "a dir/sub/f g" > "out put.txt"; pwd > where', "_", data.name],
        stage_in=[data, folder],
        stage_out={"out put.txt": str(result)},
    )
    await run(xq)
    assert job.status == JobStatus.FINISHED, read(job.stderr_file.path)
    assert result.read_bytes() == b"line1\n\xff\ndeep\n"


async def test_stage_out_missing_fails_the_job_over_ssh(sshd_cluster_factory, tmp_path: Path) -> None:
    cluster, workdir = private_cluster(sshd_cluster_factory, tmp_path)
    keep = tmp_path / "keep.txt"
    keep.write_text("already here\n")
    xq = Xqute("ssh", workdir=workdir, scheduler_opts={"servers": {"p": cluster.hosts[0].server_spec()}})
    job = await xq.feed(["true"], stage_out={"never made": str(keep)})
    await run(xq)
    assert job.status == JobStatus.FAILED
    assert "never made" in read(job.stderr_file.path)
    assert keep.read_text() == "already here\n"


async def test_an_end_not_fetched_yet_is_not_called_lost(
    sshd_cluster_factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A job ended on its host but its files could not be brought home yet
    (here: its local job.stdout is blocked; in the wild: the connection
    dropped mid-fetch, as when sshd restarts).  Its process is gone, but it
    wrote its end there: the lost-job check must not fail it ("never wrote a
    final status", seen in CI after an sshd restart), and once the fetch
    works the job ends as it did on the host."""
    cluster, workdir = private_cluster(sshd_cluster_factory, tmp_path)
    host = cluster.hosts[0]
    marker = f"/tmp/xq-unfetched-{os.getpid()}-{tmp_path.name}"
    host.run(["rm", "-f", marker])
    opts = {"servers": {"p": host.server_spec()}, "poll_interval": 0.05, "recheck_interval": 1}
    xq = Xqute("ssh", workdir=workdir, scheduler_opts=opts)
    job = await xq.feed(["bash", "-c", f"sleep 0.5; echo hi; touch {marker}"])
    runner = asyncio.create_task(run(xq, timeout=120))
    try:
        async with asyncio.timeout(60):  # hang guard: running, then ended on its host
            while job.status != JobStatus.RUNNING:
                await asyncio.sleep(0.02)
            job.stdout_file.path.unlink(missing_ok=True)
            job.stdout_file.path.mkdir()  # every fetch fails until it goes
            while host.run(["test", "-e", marker]).returncode != 0:
                await asyncio.sleep(0.05)
        # many poll cycles, each with the lost-job check, over an ended job
        # whose files cannot come home
        for _ in range(20):
            await asyncio.sleep(0.1)
            assert job.status == JobStatus.RUNNING, read(job.stderr_file.path)
        job.stdout_file.path.rmdir()
        await runner
    finally:
        runner.cancel()
        host.run(["rm", "-f", marker])
    assert job.status == JobStatus.FINISHED, read(job.stderr_file.path)
    assert read(job.stdout_file.path) == "hi\n"
    said = [r for r in caplog.records if "cannot be brought home" in r.getMessage()]
    assert [r.levelname for r in said] == ["WARNING"], "said once, not at every poll"
    assert "Is a directory" in said[0].getMessage()


async def test_an_end_that_cannot_come_home_fails_with_why_and_is_not_rerun(
    sshd_cluster_factory, tmp_path: Path
) -> None:
    """Fetches failing for lost_after seconds (here a directory where the
    job's stdout goes; a full disk in the wild) end the wait: the job fails
    with the real reason instead of keeping the run going for ever, is not
    run again under retry (it did run), and a later run on the workdir
    brings its end home."""
    cluster, workdir = private_cluster(sshd_cluster_factory, tmp_path)
    host = cluster.hosts[0]
    marker = f"/tmp/xq-nohome-{os.getpid()}-{tmp_path.name}"
    host.run(["rm", "-f", marker])
    servers = {"p": host.server_spec()}
    opts = {"servers": servers, "poll_interval": 0.05, "recheck_interval": 1, "lost_after": 1}
    cmd = ["bash", "-c", f"echo run >> {marker}; sleep 0.5; echo hi"]
    xq = Xqute("ssh", workdir=workdir, scheduler_opts=opts, error_strategy="retry", num_retries=2)
    job = await xq.feed(cmd)
    runner = asyncio.create_task(run(xq, timeout=60))  # must end, not wait for ever
    blocked = job.stdout_file.path
    try:
        async with asyncio.timeout(60):  # hang guard
            while job.status != JobStatus.RUNNING:
                await asyncio.sleep(0.02)
        blocked.unlink(missing_ok=True)
        blocked.mkdir()  # every fetch fails from now on
        await runner
        assert job.status == JobStatus.FAILED
        err = read(job.stderr_file.path)
        assert "ended FINISHED" in err and "could not be brought home" in err, err
        assert "Is a directory" in err
        assert host.run(["cat", marker]).stdout == "run\n", "ran again"
        blocked.rmdir()
        again = Xqute("ssh", workdir=workdir, scheduler_opts={"servers": servers})
        job2 = await again.feed(cmd)
        await run(again, timeout=60)
        assert job2.status == JobStatus.FINISHED, read(job2.stderr_file.path)
        assert read(job2.stdout_file.path) == "hi\n"
        assert host.run(["cat", marker]).stdout == "run\n", "ran again"
    finally:
        runner.cancel()
        host.run(["rm", "-f", marker])
