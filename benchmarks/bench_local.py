"""W5: local throughput, xqute_ssh against xqute 2.2.1.

500 ``true`` jobs through ``Xqute("local", forks=16)``.  xqute 2.2.1 runs the
same workload in its own virtual environment (created once under
``~/.cache/xqute-ssh-bench/``), in a subprocess, through its public API.

Its local wrapper sleeps 2 s per job (``sleep 1`` twice, "to give xqute
time"), so 500 jobs at forks 16 take at least 63 s there: it runs a smaller
batch and its time is extrapolated linearly to 500 jobs (the table says so).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from .common import (
    Deadline,
    Row,
    WorkerError,
    fs_type,
    log,
    measure,
    pairwise_ratios,
    repetitions,
    run_json,
)

N_JOBS = 500
FORKS = 16
XQUTE_VERSION = "2.2.1"
#: How many jobs xqute 2.2.1 runs per repetition (then extrapolated to N_JOBS).
THEIR_JOBS = 64
THEIR_JOBS_QUICK = 32
THEIR_TIMEOUT = 120.0

VENV_DIR = (
    Path(os.environ.get("XQUTE_SSH_BENCH_CACHE", Path.home() / ".cache" / "xqute-ssh-bench"))
    / f"xqute-{XQUTE_VERSION}"
)

# Runs inside xqute 2.2.1's venv; only its public API.  Its logger would print
# one INFO line per job through rich: keep it to warnings, as a user would
# for 500 jobs, so that we time the scheduler rather than the terminal.
THEIR_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, logging, resource, sys, tempfile, time
    from collections import Counter

    import xqute
    from xqute import Xqute

    logging.getLogger("XQUTE").setLevel(logging.WARNING)

    def cpu():
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime

    async def main(n, forks):
        with tempfile.TemporaryDirectory(prefix="xqute-221-bench-") as workdir:
            t0, c0 = time.perf_counter(), cpu()
            xq = Xqute("local", forks=forks, workdir=workdir)
            for _ in range(n):
                await xq.feed(["true"])
            await xq.run_until_complete()
            wall, cpu_s = time.perf_counter() - t0, cpu() - c0
            statuses = Counter([str(await j.get_status()) for j in xq.jobs])
        print(json.dumps({"wall": wall, "cpu": cpu_s, "n": n,
                          "statuses": dict(statuses), "version": xqute.__version__}))

    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
    """
)


# ------------------------------------------------------------------ ours
async def _ours_once(n: int, forks: int, parent: str | None) -> dict[str, Any]:
    from xqute_ssh import JobStatus, Xqute

    with tempfile.TemporaryDirectory(prefix="xqute-ssh-bench-", dir=parent) as workdir:
        with measure() as span:
            xq = Xqute("local", forks=forks, workdir=workdir)
            for _ in range(n):
                await xq.feed(["true"])
            await xq.run_until_complete()
        not_done = sum(1 for j in xq.jobs if j.status != JobStatus.FINISHED)
    return {"wall": span.wall, "cpu": span.cpu, "not_finished": not_done}


def run_ours(n: int = N_JOBS, forks: int = FORKS, parent: str | None = None) -> dict[str, Any]:
    """One repetition of our engine, in this process (fresh event loop)."""
    return asyncio.run(_ours_once(n, forks, parent))


# ---------------------------------------------------------------- theirs
def venv_python(venv: Path = VENV_DIR) -> Path:
    return venv / "bin" / "python"


def ensure_xqute_venv(venv: Path = VENV_DIR) -> Path:
    """Create xqute 2.2.1's own virtualenv once; return its python."""
    py = venv_python(venv)
    check = [str(py), "-c", "import xqute; print(xqute.__version__)"]
    if py.exists():
        out = subprocess.run(check, capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip() == XQUTE_VERSION:
            return py
    log(f"creating {venv} with xqute=={XQUTE_VERSION} (once)")
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", f"xqute=={XQUTE_VERSION}"],
        check=True,
        timeout=600,
    )
    out = subprocess.run(check, capture_output=True, text=True, check=True)
    if out.stdout.strip() != XQUTE_VERSION:
        raise RuntimeError(f"expected xqute {XQUTE_VERSION}, got {out.stdout!r}")
    return py


def run_theirs(py: Path, n: int, forks: int = FORKS) -> dict[str, Any]:
    """One repetition of xqute 2.2.1 in its venv."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", prefix="xqute221_", delete=False) as fh:
        fh.write(THEIR_SCRIPT)
        script = fh.name
    try:
        # cwd elsewhere so that the repo's packages never shadow theirs
        return run_json(
            [str(py), script, str(n), str(forks)],
            timeout=THEIR_TIMEOUT,
            cwd=tempfile.gettempdir(),
        )
    finally:
        os.unlink(script)


# -------------------------------------------------------------- workload
def run_w5(reps: int, quick: bool, deadline: Deadline | None = None) -> list[Row]:
    """W5: ``reps`` pairs (ours, then xqute 2.2.1), back to back."""
    their_n = THEIR_JOBS_QUICK if quick else THEIR_JOBS
    ours_wall = Row("W5", "xqute_ssh local", f"wall, {N_JOBS} `true`, forks {FORKS}", "s")
    ours_cpu = Row("W5", "xqute_ssh local", "controller CPU (user+sys, all threads)", "s")
    ours_rate = Row("W5", "xqute_ssh local", "throughput", "jobs/s", lower_is_better=False)
    theirs_wall = Row(
        "W5",
        f"xqute {XQUTE_VERSION} local",
        f"wall, {N_JOBS} jobs (extrapolated)",
        "s",
        note=(
            f"ran {their_n} jobs per repetition and scaled x{N_JOBS / their_n:g}: "
            "its wrapper sleeps 2 s per job, so the full 500 take over 60 s"
        ),
    )
    theirs_cpu = Row(
        "W5",
        f"xqute {XQUTE_VERSION} local",
        f"controller CPU (extrapolated to {N_JOBS} jobs)",
        "s",
    )
    theirs_rate = Row(
        "W5",
        f"xqute {XQUTE_VERSION} local",
        "throughput",
        "jobs/s",
        lower_is_better=False,
    )
    try:
        py: Path | None = ensure_xqute_venv()
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        py = None
        theirs_wall.note = f"xqute {XQUTE_VERSION} could not be installed: {exc}"

    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    ours_shm = Row(
        "W5",
        "xqute_ssh local, workdir on tmpfs",
        f"wall, {N_JOBS} `true`, forks {FORKS}",
        "s",
        note="the same run with its workdir in /dev/shm: what the workdir's filesystem costs",
    )
    ours_shm_cpu = Row("W5", "xqute_ssh local, workdir on tmpfs", "controller CPU", "s")
    problems: list[str] = []
    for rep in repetitions(reps, deadline, ours_wall):
        ours = run_ours()
        if ours["not_finished"]:
            problems.append(f"run {rep + 1}: {ours['not_finished']} job(s) not FINISHED")
        ours_wall.runs.append(ours["wall"])
        ours_cpu.runs.append(ours["cpu"])
        ours_rate.runs.append(N_JOBS / ours["wall"])
        log(f"  W5 rep {rep + 1}: ours {ours['wall']:.2f}s wall, {ours['cpu']:.2f}s CPU")
        if py is None:
            continue
        try:
            theirs = run_theirs(py, their_n)
        except WorkerError as exc:
            theirs_wall.note = f"xqute {XQUTE_VERSION} failed: {exc}"
            py = None
            continue
        scale = N_JOBS / their_n
        finished = theirs["statuses"].get("6", 0)
        if finished != their_n:
            theirs_wall.note += f"; run {rep + 1}: {finished}/{their_n} FINISHED"
        theirs_wall.runs.append(theirs["wall"] * scale)
        theirs_cpu.runs.append(theirs["cpu"] * scale)
        theirs_rate.runs.append(their_n / theirs["wall"])
        log(
            f"  W5 rep {rep + 1}: xqute {XQUTE_VERSION} {theirs['wall']:.2f}s "
            f"for {their_n} jobs (~{theirs['wall'] * scale:.0f}s for {N_JOBS})"
        )
        if shm is not None:
            on_shm = run_ours(parent=shm)
            ours_shm.runs.append(on_shm["wall"])
            ours_shm_cpu.runs.append(on_shm["cpu"])
            log(f"  W5 rep {rep + 1}: ours on tmpfs {on_shm['wall']:.2f}s wall")
    theirs_wall.ratios = pairwise_ratios(ours_wall.runs, theirs_wall.runs)
    theirs_cpu.ratios = pairwise_ratios(ours_cpu.runs, theirs_cpu.runs)
    theirs_rate.ratios = pairwise_ratios(ours_rate.runs, theirs_rate.runs)
    target = ours_wall.median
    verdict = "met" if target is not None and target <= 5 else "NOT met"
    tmp = tempfile.gettempdir()
    ours_wall.note = (
        f"target ≤ 5 s: {verdict}; workdir in {tmp} ({fs_type(tmp)}). {ours_wall.note}"
    ).strip()
    if problems:
        ours_wall.note += "; " + "; ".join(problems)
    rows = [ours_wall, theirs_wall, ours_rate, theirs_rate, ours_cpu, theirs_cpu]
    if ours_shm.runs:
        rows += [ours_shm, ours_shm_cpu]
    return rows
