"""A real pipen pipeline on ``scheduler="xqute_ssh"`` (real sshd hosts) and
on ``scheduler="xqute_ssh_local"``: it must behave like pipen's own local
scheduler.  Each pipeline runs in its own process (see pipeline.py)."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from .helpers import config, finish, require_entry_points, require_pipen, run, start

require_pipen()


@pytest.fixture(autouse=True)
def _entry_points() -> None:
    require_entry_points()


def servers(*clusters: Any) -> dict[str, Any]:
    out = {}
    for cluster in clusters:
        for host in cluster.hosts:
            out[f"h{len(out)}"] = host.server_spec()
    return out


def check_outputs(r: Any) -> None:
    """What the 3-process pipeline must produce, and that the hooks ran."""
    assert r.returncode == 0 and r.record["succeeded"] is True, r.log[-4000:]
    for i in range(4):
        # on_jobcmd_init's export and prep's rewritten $cmd reached the job;
        # PIPEN_JOB_INDEX (an int in pipen) arrived as text, job 0 included.
        line = f"{i} init-ok 1 {i}\n"
        assert (r.outdir / "P3" / "all.txt").exists()
        p1 = r.metadir("P1", i)
        assert (p1 / "output" / f"a{i}.txt").read_text() == line
        assert (p1 / "prep.txt").read_text().startswith("prep bash ")
        assert (p1 / "end.txt").read_text() == "end rc=0\n"
    expected = "".join(f"{i} init-ok 1 {i}\n" * 2 for i in range(4))
    assert (r.outdir / "P3" / "all.txt").read_text() == expected
    # each process ran in its own workdir (set by pipen after post_init)
    assert {p: Path(v["workdir"]).name for p, v in r.record["procs"].items()} == {
        "P1": "P1", "P2": "P2", "P3": "P3"
    }


def test_pipeline_outputs_hooks_and_cache_on_ssh_hosts(sshd_cluster, tmp_path: Path) -> None:
    # one slot per host: the jobs of a process cannot all go to the host
    # that answered first
    cfg = config(
        tmp_path, "ok", "xqute_ssh",
        scheduler_opts={"servers": servers(sshd_cluster), "forks_per_server": 1},
    )
    r = run(cfg)
    check_outputs(r)
    # our wrapper ran each job, on both hosts
    assert (r.metadir("P1", 0) / "job.wrapped.xqute_ssh").exists()
    hosts = {e[4] for e in r.events("succeeded", "P1") + r.events("succeeded", "P2")}
    assert hosts == {"h0", "h1"}
    # no SSH connection left open when a process is done
    assert [v["open_connections"] for v in r.record["procs"].values()] == [0, 0, 0]
    assert [v["ssh_sockets"] for v in r.record["procs"].values()] == [0, 0, 0]
    # a rerun: pipen's job cache, nothing runs again
    again = run(cfg, tag="again")
    assert again.returncode == 0 and again.record["succeeded"] is True, again.log[-4000:]
    assert {p: v["succeeded"] for p, v in again.record["procs"].items()} == {
        "P1": "cached", "P2": "cached", "P3": "cached"
    }
    assert again.record["events"] == []


def test_pipeline_on_xqute_ssh_local(tmp_path: Path) -> None:
    cfg = config(tmp_path, "ok", "xqute_ssh_local")
    r = run(cfg)
    check_outputs(r)
    assert (r.metadir("P1", 0) / "job.wrapped.xqute_ssh_local").exists()
    again = run(cfg, tag="again")
    assert {p: v["succeeded"] for p, v in again.record["procs"].items()} == {
        "P1": "cached", "P2": "cached", "P3": "cached"
    }


@pytest.mark.parametrize("scheduler", ["xqute_ssh", "xqute_ssh_local"])
def test_failing_job_fails_the_pipeline(sshd_cluster, tmp_path: Path, scheduler: str) -> None:
    cfg = config(tmp_path, "fail", scheduler, scheduler_opts={"servers": servers(sshd_cluster)} if scheduler == "xqute_ssh" else {})
    r = run(cfg)
    assert r.record["succeeded"] is False, r.log[-4000:]
    assert [e[2] for e in r.events("failed")] == [2]
    assert (r.metadir("P1", 2) / "job.rc").read_text().strip() == "3"
    assert "P2" not in r.record["procs"]  # the pipeline stopped


@pytest.mark.parametrize("scheduler", ["xqute_ssh", "xqute_ssh_local"])
def test_missing_output_fails_the_job(sshd_cluster, tmp_path: Path, scheduler: str) -> None:
    opts = {"servers": servers(sshd_cluster)} if scheduler == "xqute_ssh" else {}
    cfg = config(tmp_path, "missing", scheduler, scheduler_opts=opts)
    r = run(cfg)
    assert r.record["succeeded"] is False, r.log[-4000:]
    # the script exited 0; pipen's output check failed the job, in P1 itself
    assert (r.metadir("P1", 1) / "job.rc").read_text().strip() == "0"
    metadir = r.metadir("P1", 1)
    assert "Output file 'outfile' is not generated" in (metadir / "job.stderr").read_text()
    assert (metadir / "job.status").read_text().strip() == "7"  # FAILED
    assert r.record["procs"]["P1"]["succeeded"] is False
    assert "P2" not in r.record["procs"]


def test_retry_moves_to_another_host(sshd_cluster, tmp_path: Path) -> None:
    cfg = config(
        tmp_path, "retry", "xqute_ssh",
        scheduler_opts={"servers": servers(sshd_cluster)},
        error_strategy="retry", num_retries=2,
    )
    r = run(cfg)
    check_ok = r.returncode == 0 and r.record["succeeded"] is True
    assert check_ok, r.log[-4000:]
    (failed,) = r.events("failed")
    (ok,) = [e for e in r.events("succeeded") if e[2] == 1]
    assert (failed[3], ok[3]) == (0, 1)  # trial counts
    assert failed[4] != ok[4]  # the retry ran on the other host
    # the failed attempt's files were kept
    assert (r.metadir("P1", 1) / "job.retry" / "0" / "job.rc").read_text().strip() == "5"
    assert (r.outdir / "P3" / "all.txt").exists()


@pytest.mark.parametrize("scheduler", ["xqute_ssh", "xqute_ssh_local"])
def test_halt_starts_no_further_job(sshd_cluster, tmp_path: Path, scheduler: str) -> None:
    opts = {"servers": servers(sshd_cluster)} if scheduler == "xqute_ssh" else {}
    cfg = config(tmp_path, "halt", scheduler, scheduler_opts=opts, forks=1, error_strategy="halt")
    r = run(cfg)
    assert r.record.get("succeeded") is not True, r.log[-4000:]
    (failed,) = r.events("failed")
    marks = sorted(p.name for p in (tmp_path / "marks").iterdir())
    assert marks == [f"ran.{failed[2]}"], r.log[-4000:]


def _wait_for(paths: list[Path], proc: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout  # hang guard only
    while not all(p.exists() and p.read_text().strip() for p in paths):
        if proc.poll() is not None or time.monotonic() > deadline:
            out = proc.communicate()[0] if proc.poll() is not None else ""
            pytest.fail(f"the jobs did not start; log:\n{out[-4000:]}")
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.parametrize("scheduler", ["xqute_ssh", "xqute_ssh_local"])
def test_ctrl_c_kills_the_jobs(sshd_cluster, tmp_path: Path, scheduler: str) -> None:
    opts = {"servers": servers(sshd_cluster)} if scheduler == "xqute_ssh" else {}
    cfg = config(tmp_path, "sleep", scheduler, scheduler_opts=opts)
    proc, _ = start(cfg)
    pid_files = [tmp_path / "marks" / f"pid.{i}" for i in range(4)]
    _wait_for(pid_files, proc)
    # the hosts are sshd on this machine: their jobs are visible in /proc
    pids = [int(p.read_text()) for p in pid_files]
    assert all(_alive(pid) for pid in pids)
    proc.send_signal(signal.SIGINT)
    r = finish(proc, cfg, timeout=120)
    assert r.record.get("succeeded") is not True, r.log[-4000:]
    still = [pid for pid in pids if _alive(pid)]
    assert still == [], r.log[-4000:]


def test_hosts_with_and_without_the_workdir(sshd_cluster_factory, sshd_cluster, tmp_path: Path) -> None:
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    private = sshd_cluster_factory(n=1, private_dirs=(str(hidden),))
    cfg = config(
        tmp_path, "ok", "xqute_ssh",
        workdir=hidden / "work", outdir=hidden / "out",
        scheduler_opts={"servers": {"private": private.hosts[0].server_spec(),
                                    "shared": sshd_cluster.hosts[0].server_spec()}},
    )
    r = run(cfg)
    check_outputs(r)
    hosts = {e[4] for p in ("P1", "P2", "P3") for e in r.events("succeeded", p)}
    assert hosts == {"shared"}
    # only a host without the workdir: the job fails, saying why
    cfg = config(
        tmp_path, "ok", "xqute_ssh",
        workdir=hidden / "work2", outdir=hidden / "out2",
        scheduler_opts={"servers": {"private": private.hosts[0].server_spec()}},
    )
    r = run(cfg, tag="private")
    assert r.record["succeeded"] is False
    stderr = (r.metadir("P1", 0) / "job.stderr").read_text()
    assert "does not see the workdir" in stderr, stderr


def test_unknown_option_is_a_clear_error(tmp_path: Path) -> None:
    cfg = config(tmp_path, "ok", "xqute_ssh", scheduler_opts={"servers": ["localhost"], "sevrers_x": 1})
    r = run(cfg)
    assert r.returncode != 0
    assert (
        "unknown scheduler_opts for the xqute_ssh scheduler: 'sevrers_x' "
        "(did you mean 'servers'?)" in r.log
    )


def _outcome(r: Any) -> dict[str, Any]:
    """What a user sees of a run: success, per process, failed jobs, outputs."""
    return {
        "succeeded": r.record.get("succeeded"),
        "procs": {p: v["succeeded"] for p, v in r.record["procs"].items()},
        "failed": sorted((e[1], e[2]) for e in r.record["events"] if e[0] == "failed"),
        "outputs": sorted(
            (str(p.relative_to(r.outdir)), p.read_text())
            for p in r.outdir.rglob("*")
            if p.is_file()
        ),
    }


@pytest.mark.parametrize("scenario", ["ok", "fail", "missing"])
def test_same_outcome_as_pipens_local_scheduler(sshd_cluster, tmp_path: Path, scenario: str) -> None:
    theirs = run(config(tmp_path / "local", scenario, "local"))
    ours = run(config(tmp_path / "ssh", scenario, "xqute_ssh", scheduler_opts={"servers": servers(sshd_cluster)}))
    assert _outcome(ours) == _outcome(theirs), ours.log[-3000:]
