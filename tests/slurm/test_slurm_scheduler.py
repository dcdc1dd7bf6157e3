"""The slurm scheduler against a real one-node Slurm cluster, over real sshd.

The login host is a loopback sshd on this machine; the cluster's node is
this machine too, so jobs' directories (under ~/.cache/xqute-ssh on the
"cluster") are not the controller's workdir: outputs come back over SSH.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from xqute_ssh import Xqute
from xqute_ssh.status import JobStatus

from ..helpers import read, wait_until
from .conftest import SlurmSite

pytestmark = pytest.mark.slurm


async def run(site: SlurmSite, wd: Path, cmds: list[Any], forks: int = 4, **opts: Any) -> Xqute:
    xq = Xqute("slurm", workdir=wd, forks=forks, scheduler_opts=site.opts(**opts))
    for cmd in cmds:
        await xq.feed(cmd)
    async with asyncio.timeout(120):  # hang guard
        await xq.run_until_complete()
    return xq


def slurm_jobs(site: SlurmSite, name_part: str) -> list[str]:
    """``id|name|state`` of every job Slurm knows whose name contains ``name_part``."""
    out = site.slurm.run("squeue", "-h", "-t", "all", "-o", "%i|%j|%T").stdout
    return [line for line in out.splitlines() if name_part in line]


def slurm_job(site: SlurmSite, jid: str | None) -> str:
    """``id|name|state`` of the one Slurm job with this id (by its id field:
    a name's random suffix may end in the same digits)."""
    (line,) = [ln for ln in slurm_jobs(site, "") if ln.split("|")[0] == jid]
    return line


async def test_jobs_finish_and_fail_with_outputs_and_slurm_ids(site: SlurmSite, tmp_path: Path) -> None:
    xq = await run(
        site,
        tmp_path / "wd",
        [["bash", "-c", "echo out $0; echo err >&2; exit $0", str(rc)] for rc in (0, 3, 0)],
    )
    assert [j.status for j in xq.jobs] == [JobStatus.FINISHED, JobStatus.FAILED, JobStatus.FINISHED]
    for job, rc in zip(xq.jobs, (0, 3, 0), strict=True):
        assert read(job.stdout_file.path) == f"out {rc}\n"
        assert read(job.stderr_file.path) == "err\n"
        assert read(job.rc_file.path) == f"{rc}\n"
        assert job.jid is not None and job.jid.isdigit()
        # The jid is the Slurm job, and Slurm saw it end the same way.
        line = slurm_job(site, job.jid)
        assert line.endswith("COMPLETED" if rc == 0 else "FAILED")


async def test_run_and_job_options_reach_sbatch(site: SlurmSite, tmp_path: Path) -> None:
    xq = Xqute(
        "slurm",
        workdir=tmp_path / "wd",
        forks=2,
        scheduler_opts=site.opts(mem="200M", cpus_per_task=1, sbatch_extra=["--comment=run-level"]),
    )
    show = ["bash", "-c", 'echo "$SLURM_MEM_PER_NODE $SLURM_CPUS_PER_TASK $SLURM_JOB_PARTITION"']
    plain = await xq.feed(show)
    special = await xq.feed(show)
    special.extra["sbatch"] = {"mem": "300M", "cpus_per_task": 2}
    async with asyncio.timeout(120):
        await xq.run_until_complete()
    assert read(plain.stdout_file.path) == "200 1 debug\n"
    assert read(special.stdout_file.path) == "300 2 debug\n"
    comment = site.slurm.run("squeue", "-h", "-t", "all", "-j", str(plain.jid), "-o", "%k").stdout
    assert comment.strip() == "run-level"


async def test_many_submissions_share_round_trips(site: SlurmSite, tmp_path: Path) -> None:
    xq = await run(site, tmp_path / "wd", [["true"]] * 30, forks=30)
    assert all(j.status == JobStatus.FINISHED for j in xq.jobs)
    submitter = xq.scheduler.submitter  # type: ignore[attr-defined]
    assert submitter.round_trips <= 6, submitter


async def test_timeout_fails_the_job_with_rc_124(site: SlurmSite, tmp_path: Path) -> None:
    xq = await run(site, tmp_path / "wd", [["sleep", "60"]], timeout=1)
    (job,) = xq.jobs
    assert job.status == JobStatus.FAILED
    assert read(job.rc_file.path) == "124\n"
    assert "timed out" in read(job.stderr_file.path)


async def test_kill_ends_the_slurm_job(site: SlurmSite, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    xq = Xqute("slurm", workdir=tmp_path / "wd", forks=2, scheduler_opts=site.opts())
    job = await xq.feed(["bash", "-c", f"touch {marker}; sleep 300"])
    runner = asyncio.create_task(xq.run_until_complete())
    await wait_until(marker.exists, timeout=60, what="job started")
    await xq.scheduler.kill_running_jobs(xq.jobs)
    assert job.status == JobStatus.FAILED
    line = slurm_job(site, job.jid)
    assert line.split("|")[2] in ("FAILED", "CANCELLED", "COMPLETED")
    async with asyncio.timeout(30):
        await runner


async def test_job_cancelled_by_an_admin_fails_with_slurms_reason(site: SlurmSite, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    xq = Xqute("slurm", workdir=tmp_path / "wd", forks=2, scheduler_opts=site.opts())
    job = await xq.feed(["bash", "-c", f"touch {marker}; sleep 300"])
    runner = asyncio.create_task(xq.run_until_complete())
    await wait_until(marker.exists, timeout=60, what="job started")
    site.slurm.run("scancel", str(job.jid))  # as an administrator would
    async with asyncio.timeout(60):
        await runner
    assert job.status == JobStatus.FAILED
    assert f"slurm: job {job.jid} ended CANCELLED" in read(job.stderr_file.path)


async def test_slurmctld_restart_mid_run_loses_and_repeats_nothing(site: SlurmSite, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    counter.mkdir()
    cmds = [["bash", "-c", f"sleep 2; echo x >> {counter}/$0", str(i)] for i in range(8)]
    xq = Xqute("slurm", workdir=tmp_path / "wd", forks=8, scheduler_opts=site.opts())
    for cmd in cmds[:4]:
        await xq.feed(cmd)
    await xq.run_until_complete(keep_feeding=True)  # returns at once
    await wait_until(lambda: all(j.jid and j.jid.isdigit() for j in xq.jobs), timeout=60)
    submitter = xq.scheduler.submitter  # type: ignore[attr-defined]
    await asyncio.to_thread(site.slurm.stop_ctld)
    # Submitted while slurmctld is down: sbatch cannot reach it and is retried.
    for cmd in cmds[4:]:
        await xq.feed(cmd)
    stopper = asyncio.create_task(xq.stop_feeding())
    await wait_until(lambda: submitter.retries > 0, timeout=90, what="sbatch refused")
    await asyncio.to_thread(site.slurm.start_ctld)
    async with asyncio.timeout(180):
        await stopper
    assert [j.status for j in xq.jobs] == [JobStatus.FINISHED] * 8
    for i in range(8):
        assert read(counter / str(i)) == "x\n", f"job {i} ran {read(counter / str(i))!r}"



async def test_login_node_sshd_restart_mid_run(site: SlurmSite, tmp_path: Path) -> None:
    """The connection to the login node drops while jobs run and more are
    submitted: the pool reconnects, nothing is lost or run twice."""
    counter = tmp_path / "runs"
    counter.mkdir()
    cmds = [["bash", "-c", f"echo x >> {counter}/$0; sleep 2", str(i)] for i in range(10)]
    xq = Xqute("slurm", workdir=tmp_path / "wd", forks=10, scheduler_opts=site.opts())
    for cmd in cmds[:5]:
        await xq.feed(cmd)
    await xq.run_until_complete(keep_feeding=True)  # returns at once
    await wait_until(lambda: all(j.jid and j.jid.isdigit() for j in xq.jobs), timeout=60)
    await asyncio.to_thread(site.login.restart)  # every connection drops
    for cmd in cmds[5:]:
        await xq.feed(cmd)
    async with asyncio.timeout(180):
        await xq.stop_feeding()
    assert [j.status for j in xq.jobs] == [JobStatus.FINISHED] * 10
    for i in range(10):
        assert read(counter / str(i)) == "x\n", f"job {i} ran {read(counter / str(i))!r}"


def _flaky_sbatch(tmp_path: Path) -> Path:
    """An sbatch that refuses first, then times out *after* submitting, then works.

    What a busy cluster does: a QOS submit limit, "Resource temporarily
    unavailable", and the nasty one: "Socket timed out" although slurmctld
    did accept the job.
    """
    state = tmp_path / "sbatch-calls"
    shim = tmp_path / "sbatch"
    shim.write_text(
        "#!/bin/sh\n"
        f"n=$(cat {state} 2>/dev/null || echo 0); echo $((n+1)) > {state}\n"
        'if [ "$n" -lt 1 ]; then echo "sbatch: error: QOSMaxSubmitJobPerUserLimit" >&2; '
        'echo "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy" >&2; exit 1; fi\n'
        'if [ "$n" -lt 2 ]; then echo "sbatch: error: Batch job submission failed: '
        'Resource temporarily unavailable" >&2; exit 1; fi\n'
        'if [ "$n" -lt 4 ]; then sbatch "$@" >/dev/null 2>&1; echo "sbatch: error: Batch job '
        'submission failed: Socket timed out on send/recv operation" >&2; exit 1; fi\n'
        'exec sbatch "$@"\n'
    )
    shim.chmod(0o755)
    return shim


async def test_sbatch_refusing_for_a_while_neither_loses_nor_duplicates(site: SlurmSite, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    counter.mkdir()
    cmds = [["bash", "-c", f"echo x >> {counter}/$0", str(i)] for i in range(6)]
    xq = await run(
        site, tmp_path / "wd", cmds, forks=6, sbatch=str(_flaky_sbatch(tmp_path))
    )
    assert [j.status for j in xq.jobs] == [JobStatus.FINISHED] * 6
    for i in range(6):
        assert read(counter / str(i)) == "x\n"
    # One Slurm job per xqute job, although two submissions "timed out".
    sha = xq.scheduler._sha  # type: ignore[attr-defined]
    assert len(slurm_jobs(site, f"|slurm-{sha}-")) == 6
    assert xq.scheduler.submitter.retries >= 3  # type: ignore[attr-defined]


async def test_submission_refused_for_good_fails_the_job(site: SlurmSite, tmp_path: Path) -> None:
    xq = await run(site, tmp_path / "wd", [["true"]], partition="nosuchpartition")
    (job,) = xq.jobs
    assert job.status == JobStatus.FAILED
    assert "invalid partition" in read(job.stderr_file.path).lower()


CONTROLLER = """
import asyncio, json, sys
from xqute_ssh import Xqute
async def main():
    opts, wd, counter = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    xq = Xqute("slurm", workdir=wd, forks=6, scheduler_opts=opts)
    for i in range(6):
        await xq.feed(["bash", "-c", f"echo x >> {counter}/$0; sleep 6", str(i)])
    await xq.run_until_complete()
    print(json.dumps([[j.status.name, j.jid] for j in xq.jobs]))
asyncio.run(main())
"""


async def test_controller_killed_and_restarted_reattaches(site: SlurmSite, tmp_path: Path) -> None:
    script = tmp_path / "controller.py"
    script.write_text(CONTROLLER)
    counter = tmp_path / "runs"
    counter.mkdir()
    # 4 CPUs per job on the 16-CPU node: 4 run at once, 2 wait in the queue.
    opts = site.opts(cpus_per_task=4)
    args = [sys.executable, str(script), json.dumps(opts), str(tmp_path / "wd"), str(counter)]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wd = tmp_path / "wd"

    def ids_recorded() -> bool:
        texts = [(wd / str(i) / "job.jid").read_text() if (wd / str(i) / "job.jid").exists() else "" for i in range(6)]
        return all(t.strip().isdigit() for t in texts)

    deadline = time.monotonic() + 90
    # Kill the controller while 4 jobs run and 2 wait in Slurm's queue,
    # every id recorded.
    while len(list(counter.iterdir())) < 4 or not ids_recorded():  # hang guard
        assert time.monotonic() < deadline, first.stderr.read() if first.poll() is not None else "timeout"
        await asyncio.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = await asyncio.create_subprocess_exec(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    async with asyncio.timeout(120):
        out, err = await second.communicate()
    assert second.returncode == 0, err.decode()[-3000:]
    result = json.loads(out.decode().splitlines()[-1])
    assert [s for s, _ in result] == ["FINISHED"] * 6
    for i in range(6):
        assert read(counter / str(i)) == "x\n", f"job {i} ran twice"


async def test_id_lost_between_sbatch_and_recording_is_found_again(site: SlurmSite, tmp_path: Path) -> None:
    """The controller died after sbatch but before writing job.jid: the
    restarted one finds the job by the id file on the cluster."""
    wd = tmp_path / "wd"
    marker = tmp_path / "started"
    first = Xqute("slurm", workdir=wd, forks=1, scheduler_opts=site.opts())
    job = await first.feed(["bash", "-c", f"echo x >> {marker}; sleep 2"])
    sched = first.scheduler
    await sched.submit_job_and_update_status(job)
    jid = job.jid
    assert jid and jid.isdigit()
    name = json.dumps(slurm_job(site, jid).split("|")[1])
    await sched.shutdown()
    # As if the controller died before recording the id:
    await asyncio.to_thread(Path(job.jid_file.path).write_text, f"slurm:{json.loads(name)}:\n")

    second = Xqute("slurm", workdir=wd, forks=1, scheduler_opts=site.opts())
    await second.feed(["bash", "-c", f"echo x >> {marker}; sleep 2"])
    async with asyncio.timeout(120):
        await second.run_until_complete()
    (again,) = second.jobs
    assert again.status == JobStatus.FINISHED
    assert again.jid == jid
    assert read(marker) == "x\n"


@pytest.mark.slow
async def test_a_thousand_short_jobs(site: SlurmSite, tmp_path: Path) -> None:
    t0 = time.monotonic()
    xq = Xqute("slurm", workdir=tmp_path / "wd", forks=200, scheduler_opts=site.opts())
    for i in range(1000):
        await xq.feed(["bash", "-c", "echo $0", str(i)])
    async with asyncio.timeout(900):
        await xq.run_until_complete()
    assert [j.status for j in xq.jobs] == [JobStatus.FINISHED] * 1000
    assert read(xq.jobs[999].stdout_file.path) == "999\n"
    print(f"1000 jobs in {time.monotonic() - t0:.1f}s")


@pytest.mark.slow
async def test_slurm_time_limit_fails_the_job_with_slurms_reason(site: SlurmSite, tmp_path: Path) -> None:
    """Slurm's own limit (minutes; checked every 30 s or so): about 90 s."""
    xq = Xqute("slurm", workdir=tmp_path / "wd", forks=1, scheduler_opts=site.opts(time="1"))
    await xq.feed(["sleep", "600"])
    async with asyncio.timeout(240):
        await xq.run_until_complete()
    (job,) = xq.jobs
    assert job.status == JobStatus.FAILED
    assert f"slurm: job {job.jid} ended TIMEOUT" in read(job.stderr_file.path)


async def test_mounted_workdir_is_used_in_place(site: SlurmSite, tmp_path: Path) -> None:
    """The cluster sees the workdir (here at the same path): nothing is copied."""
    wd = tmp_path / "wd"
    xq = await run(site, wd, [["bash", "-c", 'echo "$XQUTE_JOB_METADIR"']], mounted_workdir=str(wd))
    (job,) = xq.jobs
    assert job.status == JobStatus.FINISHED
    assert read(job.stdout_file.path) == f"{wd / '0'}\n"
    assert (wd / "0" / "job.slurm_id").read_text().strip() == job.jid


async def test_mounted_workdir_the_cluster_does_not_see_is_a_clear_error(site: SlurmSite, tmp_path: Path) -> None:
    """Before, jobs were submitted into a directory made on the login node
    and then looked lost ("ended COMPLETED"); now nothing is submitted and
    each job's stderr says what is wrong and what to change."""
    elsewhere = tmp_path / "not-the-workdir"
    xq = await run(site, tmp_path / "wd", [["true"]], mounted_workdir=str(elsewhere))
    (job,) = xq.jobs
    assert job.status == JobStatus.FAILED
    stderr = read(job.stderr_file.path)
    assert f"does not see the workdir at {elsewhere}" in stderr, stderr
    assert "give mounted_workdir as the workdir's path on the cluster" in stderr, stderr
    assert not elsewhere.exists()


async def test_same_jobs_run_again_are_not_resubmitted(site: SlurmSite, tmp_path: Path) -> None:
    """resume (the default): jobs that ended in an earlier run of the same
    workdir are reported as they ended, not sent to Slurm again."""
    counter = tmp_path / "runs"
    counter.mkdir()
    cmds = [["bash", "-c", f"echo x >> {counter}/$0; exit $1", str(i), str(i)] for i in range(2)]
    first = await run(site, tmp_path / "wd", cmds)
    again = await run(site, tmp_path / "wd", cmds)
    assert [j.status for j in again.jobs] == [JobStatus.FINISHED, JobStatus.FAILED]
    assert [j.jid for j in again.jobs] == [j.jid for j in first.jobs]
    for i in range(2):
        assert read(counter / str(i)) == "x\n"
