"""A real pipen pipeline on ``scheduler="xqute_ssh_slurm"``: each job a Slurm
job on the one-node test cluster, submitted over the loopback login node
(``-m slurm``; the option checks at the end need no cluster).

The pipeline (tests/pipen/pipeline.py, run in its own process) has two
processes here: P1 (4 jobs) -> P2 (4 jobs).  The cluster's node is this
machine, so it sees the pipeline's workdir and outdir at their own paths,
as pipen's jobs need.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from xqute_ssh.path import SpecPath
from xqute_ssh.schedulers.slurm.backend import workdir_key

from ..pipen.helpers import config, finish, require_entry_points, require_pipen, run, start
from .conftest import SlurmSite

require_pipen()

SCHED = "xqute_ssh_slurm"


@pytest.fixture(autouse=True)
def _entry_point() -> None:
    require_entry_points(SCHED)


def opts(site: SlurmSite, **extra: Any) -> dict[str, Any]:
    """scheduler_opts: the options of Xqute("slurm"), sbatch ones included."""
    return {
        "login": site.login.spec_string,
        "keyfile": str(site.login.client_key),
        "known_hosts": str(site.login.known_hosts),
        "kill_grace": 1,
        **extra,
    }


def slurm_jobs(site: SlurmSite, proc_workdir: str, proc: str) -> list[list[str]]:
    """[id, name, state, comment, min memory] of every Slurm job this pipen
    process submitted (its job names carry the process and its workdir)."""
    prefix = f"{proc}-{workdir_key(SpecPath(proc_workdir))}-"
    out = site.slurm.run("squeue", "-h", "-t", "all", "-o", "%i|%j|%T|%k|%m").stdout
    return [ln.split("|") for ln in out.splitlines() if ln.split("|")[1].startswith(prefix)]


@pytest.mark.slurm
def test_pipeline_runs_on_slurm_and_a_rerun_is_cached(site: SlurmSite, tmp_path: Path) -> None:
    cfg = config(
        tmp_path, "ok", SCHED, procs=2,
        scheduler_opts=opts(site, mem="200M", sbatch_extra=["--comment=from-pipen"]),
    )
    r = run(cfg, timeout=180)
    assert r.returncode == 0 and r.record["succeeded"] is True, r.log[-4000:]
    print(f"pipeline on {SCHED}: {r.record['seconds']:.1f}s")
    assert set(r.record["procs"]) == {"P1", "P2"}
    for i in range(4):
        p1, p2 = r.metadir("P1", i), r.metadir("P2", i)
        # the hooks' bash ran in the Slurm job; PIPEN_JOB_INDEX arrived
        line = f"{i} init-ok 1 {i}\n"
        assert (p1 / "output" / f"a{i}.txt").read_text() == line
        assert (p1 / "prep.txt").read_text().startswith("prep bash ")
        assert (p1 / "end.txt").read_text() == "end rc=0\n"
        # P2 read P1's output at its path and wrote the pipeline's outdir
        assert (r.outdir / "P2" / str(i) / f"b{i}.txt").read_text() == line * 2
        assert (p2 / "job.rc").read_text().strip() == "0"
        wrapper = (p1 / f"job.wrapped.{SCHED}").read_text()
        assert "#SBATCH --mem=200M" in wrapper
    # Slurm ran them: one Slurm job per pipen job, with the run's options
    for proc in ("P1", "P2"):
        jobs = slurm_jobs(site, r.record["procs"][proc]["workdir"], proc)
        assert len(jobs) == 4, jobs
        assert {(state, comment, mem) for _, _, state, comment, mem in jobs} == {
            ("COMPLETED", "from-pipen", "200M")
        }
    # the login node's connection is closed when a process is done
    assert [v["open_connections"] for v in r.record["procs"].values()] == [0, 0]

    # A rerun: pipen's job cache; nothing goes to Slurm again.
    again = run(cfg, timeout=180, tag="again")
    assert again.returncode == 0 and again.record["succeeded"] is True, again.log[-4000:]
    assert {p: v["succeeded"] for p, v in again.record["procs"].items()} == {
        "P1": "cached", "P2": "cached"
    }
    assert again.record["events"] == []
    for proc in ("P1", "P2"):
        assert len(slurm_jobs(site, r.record["procs"][proc]["workdir"], proc)) == 4


@pytest.mark.slurm
def test_failing_job_fails_the_pipeline_with_its_stderr(site: SlurmSite, tmp_path: Path) -> None:
    r = run(config(tmp_path, "fail_stderr", SCHED, procs=2, scheduler_opts=opts(site)), timeout=180)
    assert r.record["succeeded"] is False, r.log[-4000:]
    assert [e[2] for e in r.events("failed")] == [2]
    metadir = r.metadir("P1", 2)
    assert (metadir / "job.rc").read_text().strip() == "3"
    # pipen's job.stderr holds the job's own stderr, nothing else
    assert (metadir / "job.stderr").read_text() == "no good: a=2\n"
    assert "P2" not in r.record["procs"]  # the pipeline stopped
    # the other jobs finished
    assert sorted(e[2] for e in r.events("succeeded")) == [0, 1, 3]


@pytest.mark.slurm
def test_job_whose_wrapper_dies_fails_with_slurms_word(site: SlurmSite, tmp_path: Path) -> None:
    """A job Slurm ends without the wrapper recording an end (the batch
    shell KILLed, as by the OOM killer) fails at the next poll with Slurm's
    state in its stderr (not after xqute's rechecks, with rc -3 and "not
    running in the scheduler")."""
    r = run(config(tmp_path, "vanish", SCHED, procs=2, scheduler_opts=opts(site)), timeout=180)
    assert r.record["succeeded"] is False, r.log[-4000:]
    assert [e[2] for e in r.events("failed")] == [1]
    metadir = r.metadir("P1", 1)
    assert (metadir / "job.rc").read_text().strip() == "-1"
    stderr = (metadir / "job.stderr").read_text()
    assert "slurm: job " in stderr and " ended FAILED" in stderr, stderr


@pytest.mark.slurm
def test_ctrl_c_cancels_the_slurm_jobs(site: SlurmSite, tmp_path: Path) -> None:
    cfg = config(tmp_path, "sleep", SCHED, procs=2, scheduler_opts=opts(site))
    proc, _ = start(cfg)
    pid_files = [tmp_path / "marks" / f"pid.{i}" for i in range(4)]
    deadline = time.monotonic() + 120  # hang guard only
    while not all(p.exists() and p.read_text().strip() for p in pid_files):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the jobs did not start; log:\n{proc.communicate()[0][-4000:]}")
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    r = finish(proc, cfg, timeout=120)
    assert r.record.get("succeeded") is not True, r.log[-4000:]
    jobs = slurm_jobs(site, str(tmp_path / "work" / "xqtest" / "P1"), "P1")
    assert len(jobs) == 4, jobs
    # Slurm ended each one (none left running or pending)
    assert {state for _, _, state, _, _ in jobs} <= {"CANCELLED", "FAILED", "COMPLETED"}, jobs


def test_options_that_cannot_apply_under_pipen_are_clear_errors(tmp_path: Path) -> None:
    """No cluster needed: the scheduler refuses them when pipen makes it.
    (remote_workdir: pipen's jobs must run in the pipeline's own paths.)"""
    cfg = config(
        tmp_path, "ok", SCHED, procs=2,
        scheduler_opts={"login": "nobody@127.0.0.1", "remote_workdir": "/scratch/x"},
    )
    r = run(cfg, timeout=120)
    assert r.record.get("succeeded") is not True
    assert "remote_workdir: not an option of the xqute_ssh_slurm scheduler" in r.log, r.log[-3000:]
    cfg = config(tmp_path, "ok", SCHED, procs=2, scheduler_opts={"partition": "debug"})
    r = run(cfg, timeout=120, tag="nologin")
    assert "give its login node" in r.log, r.log[-3000:]
