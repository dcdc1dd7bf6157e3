"""W1-W4, W6: the SSH scheduler on two loopback OpenSSH hosts.

The hosts come from the test harness (``xqute_ssh.testing.SshCluster``): real
``sshd`` processes on 127.0.0.x, each with its own port and keys.  Their
``MaxStartups`` is raised so that GNU parallel, which opens one SSH
connection per job, can use 32 slots per host without sshd dropping
connections; ``MaxSessions`` keeps its default (10), which our scheduler has
to live with.

Subjects:

* ours: ``Xqute("ssh", forks=64, scheduler_opts={"servers": ...})``;
* GNU parallel ``--sshlogin 32/ssh -p PORT -i KEY ... user@addr`` per host;
* plain asyncssh: one connection per host, a fresh exec channel per job,
  8 at once per host (sshd's MaxSessions is 10);
* the floor: ``/bin/true`` written down one already-open ``sh`` per host,
  all lines pipelined, then every reply read.

Slow subjects run a smaller batch and are extrapolated linearly (the table
says so) to keep the whole run within its budget.

W3 runs in a subprocess (``python -m benchmarks.bench_ssh w3 ...``) so that
its peak RSS is the controller's alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import (
    REPO_ROOT,
    Deadline,
    Row,
    WorkerError,
    log,
    measure,
    median,
    pairwise_ratios,
    percentile,
    python_module_argv,
    repetitions,
    run_json,
)

N_HOSTS = 2
FORKS = 64
SLOTS_PER_HOST = FORKS // N_HOSTS
ASYNCSSH_PER_HOST = 8
#: Lets GNU parallel open 32 connections per host at once (default 10:30:100).
SSHD_CONFIG = ("MaxStartups 200:30:400",)
RUN_TIMEOUT = 180.0
#: Longest wait for the hosts to go quiet between two subjects.
SETTLE_TIMEOUT = 90.0


@dataclass(frozen=True)
class Sizes:
    """Batch sizes for one run of the suite."""

    w1_jobs: int
    w1_parallel_jobs: int
    w1_asyncssh_jobs: int
    w2_jobs: int
    w3_jobs: int
    w3_window: float
    w4_jobs: int

    @classmethod
    def for_mode(cls, quick: bool) -> Sizes:
        if quick:
            return cls(300, 64, 64, 32, 2_000, 2.0, 64)
        return cls(1_000, 128, 200, 64, 10_000, 5.0, 128)


@dataclass(frozen=True)
class Target:
    """How the alternatives reach one harness host."""

    name: str
    address: str
    port: int
    user: str
    key: str
    known_hosts: str
    spec: dict[str, Any]
    host: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def from_host(cls, host: Any) -> Target:
        return cls(
            name=str(host.name),
            address=str(host.address),
            port=int(host.port),
            user=str(host.user),
            key=str(host.client_key),
            known_hosts=str(host.known_hosts),
            spec=dict(host.server_spec()),
            host=host,
        )

    def ssh_command(self) -> str:
        """OpenSSH client command line, as GNU parallel's sshlogin wants it."""
        return (
            f"ssh -p {self.port} -i {self.key} -o UserKnownHostsFile={self.known_hosts}"
            " -o StrictHostKeyChecking=yes -o BatchMode=yes"
            f" {self.user}@{self.address}"
        )


def fresh_login_seconds(targets: Sequence[Target], tries: int = 3) -> float | None:
    """Median time of ``ssh host true`` with OpenSSH: a login and the rc files."""
    times = []
    for i in range(tries):
        t = targets[i % len(targets)]
        t0 = time.perf_counter()
        done = subprocess.run(
            [*t.ssh_command().split(), "true"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        if done.returncode == 0:
            times.append(time.perf_counter() - t0)
    return median(times)


def settle(targets: Sequence[Target], timeout: float = SETTLE_TIMEOUT) -> float:
    """Wait (untimed) until the hosts run nothing but their listening sshd.

    A subject that opens many sessions (GNU parallel) leaves logins still
    finishing their rc files; the next subject must not pay for them.
    Returns the seconds waited.
    """
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        busy = [t for t in targets if t.host is not None and len(t.host.pids()) > 1]
        if not busy:
            break
        time.sleep(0.2)
    return time.monotonic() - t0


def servers_of(targets: Sequence[Target], **extra: Any) -> dict[str, dict[str, Any]]:
    return {t.name: {**t.spec, **extra} for t in targets}


# ---------------------------------------------------------------- harness
def ssh_unavailable() -> str | None:
    """Why the SSH workloads cannot run here, or None."""
    try:
        import xqute_ssh.schedulers.ssh  # noqa: F401
    except ImportError as exc:
        return f"the SSH scheduler is not available ({exc})"
    try:
        from xqute_ssh.testing import SshCluster  # noqa: F401
    except ImportError as exc:
        return f"the sshd harness xqute_ssh.testing.SshCluster is not available ({exc})"
    return None


@contextlib.contextmanager
def cluster(base: Path, private_dir: Path | None = None) -> Iterator[list[Target]]:
    """Two harness hosts; with ``private_dir``, each sees its own empty tmpfs there."""
    from xqute_ssh.testing import SshCluster

    private = (str(private_dir),) if private_dir is not None else ()
    with SshCluster(base, n=N_HOSTS, sshd_config=SSHD_CONFIG, private_dirs=private) as c:
        targets = [Target.from_host(h) for h in c.hosts]
        try:
            yield targets
        finally:
            # The harness SIGKILLs whatever still runs on its hosts when it
            # stops; a login killed inside its rc files can leave a lock behind
            # (pyenv's rehash lock makes every later login wait 60 s).
            settle(targets)


SSHD_NOTE = "sshd: " + "; ".join(SSHD_CONFIG)


# ------------------------------------------------------------------- ours
_SEEN: dict[int, float] = {}


def _latency_probe() -> Any:
    """A plugin recording when the controller sees each job succeed."""
    from xqute_ssh import plugin

    class XquteSshBenchLatency:
        name = "xqute-ssh-bench-latency"

        @plugin.impl
        async def on_job_succeeded(scheduler: Any, job: Any) -> None:
            _SEEN[job.index] = time.time()

    return XquteSshBenchLatency


def exit_to_seen(jobs: Sequence[Any]) -> list[float]:
    """Seconds from each job's rc file mtime to on_job_succeeded."""
    out = []
    for job in jobs:
        seen = _SEEN.get(job.index)
        if seen is None:
            continue
        try:
            mtime = os.stat(str(job.rc_file.path)).st_mtime_ns / 1e9
        except OSError:
            continue
        out.append(max(0.0, seen - mtime))
    return out


@dataclass
class OursRun:
    wall: float
    cpu: float
    not_finished: int
    latencies: list[float]
    error: str = ""


async def _ours(
    servers: dict[str, dict[str, Any]],
    cmds: Sequence[Sequence[str]],
    probe: bool,
    workdir_parent: Path | None = None,
) -> OursRun:
    from xqute_ssh import JobStatus, Xqute

    _SEEN.clear()
    plugins = [_latency_probe()] if probe else None
    with tempfile.TemporaryDirectory(prefix="xqute-ssh-bench-", dir=workdir_parent) as wd:
        with measure() as span:
            xq = Xqute(
                "ssh",
                forks=FORKS,
                workdir=wd,
                plugins=plugins,
                scheduler_opts={"servers": servers},
            )
            for cmd in cmds:
                await xq.feed(list(cmd))
            async with asyncio.timeout(RUN_TIMEOUT):
                await xq.run_until_complete()
        bad = sum(1 for j in xq.jobs if j.status != JobStatus.FINISHED)
        lat = exit_to_seen(xq.jobs) if probe else []
    return OursRun(span.wall, span.cpu, bad, lat)


def run_ours(
    servers: dict[str, dict[str, Any]],
    cmds: Sequence[Sequence[str]],
    probe: bool = False,
    workdir_parent: Path | None = None,
) -> OursRun:
    """One run of our engine in this process (fresh event loop); never raises on a hang."""
    try:
        return asyncio.run(_ours(servers, cmds, probe, workdir_parent))
    except TimeoutError:
        return OursRun(float("nan"), float("nan"), len(cmds), [], "timed out")


# ------------------------------------------------------------ GNU parallel
@dataclass
class ParallelRun:
    """One GNU parallel run, read from its joblog."""

    wall: float
    startup: float  # launch to the first job's start (its login probing)
    span: float  # first job's start to the last job's end
    failed: int

    def extrapolate(self, n: int, full: int) -> float:
        """Time for ``full`` jobs: the one-off start-up, then the same pace."""
        return self.startup + self.span * full / n


def run_parallel(
    targets: Sequence[Target], cmd: str, n: int, slots: int, timeout: float = RUN_TIMEOUT
) -> ParallelRun:
    """n jobs of ``cmd`` through GNU parallel with ``slots`` per host (NaN on a timeout)."""
    with tempfile.TemporaryDirectory(prefix="bench-parallel-") as tmp:
        joblog = Path(tmp) / "joblog"
        argv = ["parallel", "--will-cite", "--joblog", str(joblog), "-N0"]
        for t in targets:
            argv += ["--sshlogin", f"{slots}/{t.ssh_command()}"]
        argv += [cmd, ":::", *map(str, range(n))]
        launched = time.time()
        t0 = time.perf_counter()
        try:
            subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            nan = float("nan")
            return ParallelRun(nan, nan, nan, n)
        wall = time.perf_counter() - t0
        # joblog columns: Seq Host Starttime JobRuntime Send Receive Exitval ...
        starts: list[float] = []
        ends: list[float] = []
        ok = 0
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in joblog.read_text().splitlines()[1:]:
                cols = line.split("\t")
                starts.append(float(cols[2]))
                ends.append(float(cols[2]) + float(cols[3]))
                ok += cols[6] == "0"
    if not starts:
        return ParallelRun(wall, 0.0, wall, n)
    return ParallelRun(wall, min(starts) - launched, max(ends) - min(starts), n - ok)


# ---------------------------------------------------------------- asyncssh
async def _connect(t: Target) -> Any:
    import asyncssh

    return await asyncssh.connect(
        t.address,
        port=t.port,
        username=t.user,
        client_keys=[t.key],
        known_hosts=t.known_hosts,
    )


async def _asyncssh_exec(targets: Sequence[Target], n: int) -> tuple[float, int]:
    conns = [await _connect(t) for t in targets]
    try:
        sems = [asyncio.Semaphore(ASYNCSSH_PER_HOST) for _ in conns]
        failed = 0

        async def one(i: int) -> None:
            nonlocal failed
            k = i % len(conns)
            async with sems[k]:
                try:
                    result = await conns[k].run("true", check=False)
                    if result.exit_status != 0:
                        failed += 1
                except Exception:
                    failed += 1

        t0 = time.perf_counter()
        async with asyncio.timeout(RUN_TIMEOUT):
            await asyncio.gather(*(one(i) for i in range(n)))
        return time.perf_counter() - t0, failed
    finally:
        for c in conns:
            c.close()
        for c in conns:
            await c.wait_closed()


async def _floor(targets: Sequence[Target], n: int) -> float:
    conns = [await _connect(t) for t in targets]
    try:
        procs = []
        for c in conns:
            proc = await c.create_process("sh", stderr=subprocess.DEVNULL)
            proc.stdin.write("echo ready\n")
            await proc.stdout.readline()  # the channel is open and the shell up
            procs.append(proc)
        shares = [n // len(procs) + (1 if i < n % len(procs) else 0) for i in range(len(procs))]

        async def drive(proc: Any, k: int) -> None:
            proc.stdin.write("/bin/true; echo $?\n" * k)
            for _ in range(k):
                await proc.stdout.readline()

        t0 = time.perf_counter()
        async with asyncio.timeout(RUN_TIMEOUT):
            await asyncio.gather(*(drive(p, k) for p, k in zip(procs, shares, strict=True)))
        wall = time.perf_counter() - t0
        for p in procs:
            p.stdin.write_eof()
            p.close()
        return wall
    finally:
        for c in conns:
            c.close()
        for c in conns:
            await c.wait_closed()


# ------------------------------------------------------------- workloads
def _cap(deadline: Deadline) -> float:
    """A subject's time limit: what the budget has left, within [30 s, RUN_TIMEOUT]."""
    return max(30.0, min(RUN_TIMEOUT, deadline.left()))


def _scaled(n: int, full: int) -> str:
    return f"ran {n} jobs per run, scaled x{full / n:g} to {full:,}"


def w1(
    targets: Sequence[Target],
    sizes: Sizes,
    reps: int,
    deadline: Deadline,
    latencies: list[list[float]] | None = None,
) -> list[Row]:
    """Throughput; with ``latencies``, each run's exit→seen delays go there."""
    n = sizes.w1_jobs
    servers = servers_of(targets)
    measure_s = f"wall, {n:,} `true`, {N_HOSTS} hosts"
    ours = Row("W1", "xqute_ssh ssh, forks 64", measure_s, "s")
    ours_rate = Row("W1", "xqute_ssh ssh, forks 64", "throughput", "jobs/s", lower_is_better=False)
    ours_cpu = Row("W1", "xqute_ssh ssh, forks 64", "controller CPU", "s")
    par = Row(
        "W1",
        f"GNU parallel --sshlogin {SLOTS_PER_HOST}/host",
        measure_s + " (extrapolated)",
        "s",
        note=(
            f"ran {sizes.w1_parallel_jobs} jobs per run; extrapolated as its "
            f"start-up + {n / sizes.w1_parallel_jobs:g} x the span from first "
            f"start to last end; one ssh connection per job; {SSHD_NOTE}"
        ),
    )
    ash = Row(
        "W1",
        f"asyncssh exec per job, {ASYNCSSH_PER_HOST}/host",
        measure_s + " (extrapolated)",
        "s",
        note=_scaled(sizes.w1_asyncssh_jobs, n) + "; one open connection per host",
    )
    floor = Row(
        "W1",
        "floor: /bin/true via one open sh per host",
        measure_s,
        "s",
        note="lines pipelined, run one after another per host",
    )
    shm = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else None
    ours_shm = Row(
        "W1",
        "xqute_ssh ssh, forks 64, workdir on tmpfs",
        measure_s,
        "s",
        note=(
            "the same run with its workdir in /dev/shm (the hosts see it too): "
            "what creating each job's files costs on the default workdir's "
            "filesystem; GNU parallel writes no file per job"
        ),
    )
    ours_shm_cpu = Row("W1", "xqute_ssh ssh, forks 64, workdir on tmpfs", "controller CPU", "s")
    par_failed = ash_failed = 0
    par_startup: list[float] = []
    cmds = [["true"]] * n
    for rep in repetitions(reps, deadline, ours):
        settle(targets)
        r = run_ours(servers, cmds, probe=latencies is not None)
        ours.runs.append(r.wall)
        ours_cpu.runs.append(r.cpu)
        ours_rate.runs.append(n / r.wall if r.wall == r.wall else float("nan"))
        if r.not_finished or r.error:
            ours.note += f" run {rep + 1}: {r.not_finished} not FINISHED {r.error}."
        if latencies is not None and r.latencies:
            latencies.append(r.latencies)
        log(f"  W1 rep {rep + 1}: ours {r.wall:.2f}s wall, {r.cpu:.2f}s CPU")
        if shm is not None:
            settle(targets)
            r = run_ours(servers, cmds, workdir_parent=shm)
            ours_shm.runs.append(r.wall)
            ours_shm_cpu.runs.append(r.cpu)
            if r.not_finished or r.error:
                ours_shm.note += f" run {rep + 1}: {r.not_finished} not FINISHED {r.error}."
            log(f"  W1 rep {rep + 1}: ours, workdir on tmpfs, {r.wall:.2f}s wall, {r.cpu:.2f}s CPU")

        pn = sizes.w1_parallel_jobs
        settle(targets)
        pr = run_parallel(targets, "true", pn, SLOTS_PER_HOST, _cap(deadline))
        if math.isnan(pr.wall):
            par.note += f" Run {rep + 1} timed out."
        par.runs.append(pr.extrapolate(pn, n))
        par_startup.append(pr.startup)
        par_failed += pr.failed
        log(
            f"  W1 rep {rep + 1}: GNU parallel {pr.wall:.2f}s for {pn} "
            f"({pr.startup:.1f}s before the first job; {pr.failed} failed)"
        )

        an = sizes.w1_asyncssh_jobs
        settle(targets)
        wall, failed = asyncio.run(_asyncssh_exec(targets, an))
        ash.runs.append(wall * n / an)
        ash_failed += failed
        log(f"  W1 rep {rep + 1}: asyncssh exec {wall:.2f}s for {an} ({failed} failed)")

        settle(targets)
        wall = asyncio.run(_floor(targets, n))
        floor.runs.append(wall)
        log(f"  W1 rep {rep + 1}: floor {wall:.3f}s for {n}")
    if par_startup:
        par.note += (
            f"; its start-up (probing how many simultaneous logins each host "
            f"takes, as it does above 9 slots) took a median "
            f"{median(par_startup):.1f} s, counted once"
        )
    if par_failed:
        par.note += f"; {par_failed} job(s) failed over all runs"
    if ash_failed:
        ash.note += f"; {ash_failed} job(s) failed over all runs"
    for other in (par, ash, floor):
        other.ratios = pairwise_ratios(ours.runs, other.runs)
    rows = [ours, par, ash, floor, ours_rate, ours_cpu]
    if ours_shm.runs:
        ours_shm.ratios = pairwise_ratios(ours_shm.runs, par.runs)
        ours_shm.note += " (ratio: against GNU parallel in the same repetition)"
        rows += [ours_shm, ours_shm_cpu]
    return rows


def job_files_cost(parent: str | None, n: int = 200) -> float:
    """Seconds per job to make a job directory and its 4 small files there.

    What the controller does for each job before it starts (metadir, job.cmd,
    job.status, the wrapper script, job.jid); on some disks this dominates.
    """
    with tempfile.TemporaryDirectory(prefix="xqute-ssh-fscost-", dir=parent) as d:
        start = time.perf_counter()
        for i in range(n):
            sub = os.path.join(d, str(i))
            os.mkdir(sub)
            for name in ("job.cmd", "job.status", "job.wrapped", "job.jid"):
                with open(os.path.join(sub, name), "w") as fh:
                    fh.write("x\n")
        return (time.perf_counter() - start) / n


def w2(
    targets: Sequence[Target],
    sizes: Sizes,
    reps: int,
    deadline: Deadline,
) -> list[Row]:
    n = sizes.w2_jobs
    servers = servers_of(targets)
    measure_s = f"wall - 1 s, {n} `sleep 1`, forks 64"
    ours = Row("W2", "xqute_ssh ssh", measure_s, "s")
    par = Row(
        "W2",
        f"GNU parallel --sshlogin {SLOTS_PER_HOST}/host",
        measure_s,
        "s",
        note=SSHD_NOTE,
    )
    failed_total = 0
    startups: list[float] = []
    for rep in repetitions(reps, deadline, ours):
        settle(targets)
        r = run_ours(servers, [["sleep", "1"]] * n)
        ours.runs.append(r.wall - 1)
        if r.not_finished or r.error:
            ours.note += f" run {rep + 1}: {r.not_finished} not FINISHED {r.error}."
        settle(targets)
        pr = run_parallel(targets, "sleep 1", n, SLOTS_PER_HOST, _cap(deadline))
        if math.isnan(pr.wall):
            par.note += f" Run {rep + 1} timed out."
        par.runs.append(pr.wall - 1)
        startups.append(pr.startup)
        failed_total += pr.failed
        log(
            f"  W2 rep {rep + 1}: ours {r.wall:.2f}s, GNU parallel {pr.wall:.2f}s "
            f"({pr.startup:.1f}s before the first job)"
        )
    if startups:
        par.note += (
            f"; of which a median {median(startups):.1f} s before its first job "
            "(probing simultaneous logins)"
        )
    if failed_total:
        par.note += f"; {failed_total} job(s) failed over all runs"
    par.ratios = pairwise_ratios(ours.runs, par.runs)
    return [ours, par]


def latency_rows(
    subject: str, measure_s: str, per_run: Sequence[Sequence[float]], note: str = ""
) -> list[Row]:
    """Median and p95 rows: each run's median / p95, then their medians."""
    return [
        Row(
            "W4",
            subject,
            measure_s + ": median",
            "s",
            runs=[median(r) or 0.0 for r in per_run],
            note=note,
        ),
        Row(
            "W4",
            subject,
            measure_s + ": p95",
            "s",
            runs=[percentile(r, 95) or 0.0 for r in per_run],
        ),
    ]


def w4(targets: Sequence[Target], sizes: Sizes, reps: int, deadline: Deadline) -> list[Row]:
    """Latency with jobs ending at staggered times (not saturated)."""
    n = sizes.w4_jobs
    servers = servers_of(targets)
    # 0 to 0.95 s, so ends are spread out and the pool is not saturated
    cmds = [["sleep", f"{(i % 20) * 0.05:.2f}"] for i in range(n)]
    per_run: list[list[float]] = []
    cut = Row("W4", "", "", "")  # collects a budget note
    for rep in repetitions(reps, deadline, cut):
        settle(targets)
        r = run_ours(servers, cmds, probe=True)
        if r.latencies:
            per_run.append(r.latencies)
            log(f"  W4 rep {rep + 1}: median {1000 * (median(r.latencies) or 0):.0f} ms")
    return latency_rows(
        "xqute_ssh ssh",
        f"exit → FINISHED seen, {n} staggered `sleep`, forks 64",
        per_run,
        note=f"{LATENCY_NOTE}. {cut.note}".strip(),
    )


LATENCY_NOTE = (
    "from the job's rc file mtime (the kernel's coarse clock: a few ms of "
    "resolution) to on_job_succeeded in the controller"
)


def w3(targets: Sequence[Target], sizes: Sizes, reps: int, deadline: Deadline) -> list[Row]:
    n = sizes.w3_jobs
    label = "xqute_ssh ssh, forks 64"
    rss = Row("W3", label, f"controller peak RSS, {n:,} jobs fed", "MiB")
    rss_base = Row("W3", label, "controller RSS before feeding (imports)", "MiB")
    feed = Row("W3", label, f"feed {n:,} jobs (mkdir + hooks each)", "s")
    cpu = Row("W3", label, "controller CPU per poll cycle, 64 running, rest queued", "ms")
    cpu_pct = Row("W3", label, "controller CPU while 64 jobs run, rest queued", "%")
    error = ""
    for rep in repetitions(reps, deadline, rss):
        payload = json.dumps({"servers": servers_of(targets), "n": n, "window": sizes.w3_window})
        settle(targets)
        try:
            res = run_json(
                python_module_argv("benchmarks.bench_ssh", "w3", payload),
                timeout=RUN_TIMEOUT,
                cwd=REPO_ROOT,
            )
        except WorkerError as exc:
            error = str(exc)
            break
        rss.runs.append(res["peak_rss_kib"] / 1024)
        rss_base.runs.append(res["base_rss_kib"] / 1024)
        feed.runs.append(res["feed_s"])
        if res["cycles"]:
            cpu.runs.append(1000 * res["window_cpu_s"] / res["cycles"])
        cpu_pct.runs.append(100 * res["window_cpu_s"] / res["window_s"])
        log(
            f"  W3 rep {rep + 1}: peak RSS {res['peak_rss_kib'] / 1024:.0f} MiB, "
            f"{res['cycles']} cycles in {res['window_s']:.1f}s, "
            f"{res['window_cpu_s']:.3f}s CPU"
        )
    cpu.note = (
        f"jobs `sleep 600`; process CPU over a {sizes.w3_window:g} s window "
        "divided by the poll cycles in it; the run is then stopped with SIGINT"
    )
    if error:
        rss.note = f"{rss.note} Failed: {error}".strip()
    return [rss, rss_base, feed, cpu, cpu_pct]


async def _w3_worker(servers: dict[str, dict[str, Any]], n: int, window: float) -> dict[str, Any]:
    """In a subprocess: feed n long jobs, measure a steady polling window, stop."""
    from xqute_ssh import Xqute, plugin

    def rss_kib() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    started = 0
    all_started = asyncio.Event()
    want = min(n, FORKS)

    class XquteSshBenchStarted:
        name = "xqute-ssh-bench-started"

        @plugin.impl
        async def on_job_started(scheduler: Any, job: Any) -> None:
            nonlocal started
            started += 1
            if started >= want:
                all_started.set()

    def cpu() -> float:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime

    base = rss_kib()
    with tempfile.TemporaryDirectory(prefix="xqute-ssh-bench-w3-") as wd:
        xq = Xqute(
            "ssh",
            forks=FORKS,
            workdir=wd,
            plugins=[XquteSshBenchStarted],
            scheduler_opts={"servers": servers},
        )
        t0 = time.perf_counter()
        for _ in range(n):
            await xq.feed(["sleep", "600"])
        feed_s = time.perf_counter() - t0
        runner = asyncio.create_task(xq.run_until_complete())
        async with asyncio.timeout(120):
            await all_started.wait()
        await asyncio.sleep(0.5)  # let the submissions' tail settle
        c0, p0, w0 = cpu(), getattr(xq, "_polling_counter", 0), time.perf_counter()
        await asyncio.sleep(window)
        c1, p1, w1_ = cpu(), getattr(xq, "_polling_counter", 0), time.perf_counter()
        os.kill(os.getpid(), signal.SIGINT)  # the run's own orderly stop
        async with asyncio.timeout(60):
            await runner
    return {
        "base_rss_kib": base,
        "peak_rss_kib": rss_kib(),
        "feed_s": feed_s,
        "cycles": p1 - p0,
        "window_s": w1_ - w0,
        "window_cpu_s": c1 - c0,
    }


def w6(base: Path, sizes: Sizes, reps: int, deadline: Deadline) -> list[Row]:
    """W1's workload on hosts that cannot see the controller's workdir.

    Each host gets its own empty tmpfs over the workdir's parent (the
    harness's ``private_dirs``); the scheduler detects that (``shared_fs``
    "auto") and moves the job files itself.
    """
    n = sizes.w1_jobs
    row = Row(
        "W6", "xqute_ssh ssh, unshared filesystem", f"wall, {n:,} `true`, {N_HOSTS} hosts", "s"
    )
    rate = Row(
        "W6", "xqute_ssh ssh, unshared filesystem", "throughput", "jobs/s", lower_is_better=False
    )
    hidden = base / "hidden"
    hidden.mkdir()
    cmds = [["true"]] * n
    try:
        with cluster(base / "private-hosts", private_dir=hidden) as targets:
            servers = servers_of(targets)
            for rep in repetitions(reps, deadline, row):
                settle(targets)
                r = run_ours(servers, cmds, workdir_parent=hidden)
                row.runs.append(r.wall)
                rate.runs.append(n / r.wall)
                if r.not_finished or r.error:
                    row.note += f" run {rep + 1}: {r.not_finished} not FINISHED {r.error}."
                log(f"  W6 rep {rep + 1}: {r.wall:.2f}s")
    except Exception as exc:  # the harness needs root for private dirs
        row.note = f"not run: {exc}"
        return [row]
    row.note = (
        "each host sees its own empty tmpfs over the workdir's parent; shared_fs "
        f"auto-detected; job files go over the control channel / SFTP. {row.note}"
    ).strip()
    return [row, rate]


# ------------------------------------------------------------------ entry
def run_ssh_workloads(
    selected: Sequence[str], reps: int, quick: bool, deadline: Deadline
) -> list[Row]:
    """Start the hosts once and run the selected SSH workloads."""
    why = ssh_unavailable()
    if why is not None:
        return [Row(w, "xqute_ssh ssh", "—", "", note=f"not run: {why}") for w in selected]
    sizes = Sizes.for_mode(quick)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="xqute-ssh-bench-hosts-") as base:
        if "W6" in selected:
            log("== W6 unshared filesystem")
            rows += w6(Path(base), sizes, reps, deadline)
        with cluster(Path(base) / "hosts") as targets:
            if "W1" in selected:
                login = fresh_login_seconds(targets)
                rows.append(
                    Row(
                        "W1",
                        "environment",
                        "one fresh `ssh host true` (OpenSSH client, login and rc files)",
                        "s",
                        runs=[login] if login is not None else [],
                        note="what every fresh session pays here, before any job runs",
                    )
                )
                for label, parent in (("default temp dir", None), ("/dev/shm", "/dev/shm")):
                    if parent is not None and not os.access(parent, os.W_OK):
                        continue
                    rows.append(
                        Row(
                            "W1",
                            "environment",
                            f"make a job dir + 4 small files, {label}, per job",
                            "ms",
                            runs=[job_files_cost(parent) * 1000],
                            note="what the controller's file writes cost per job on that filesystem",
                        )
                    )
            loaded: list[list[float]] | None = [] if "W4" in selected and "W1" in selected else None
            # Cheap ours-only workloads first: W1 and W2 include GNU parallel,
            # whose run time varies most, so the budget cuts there if anywhere.
            if "W3" in selected:
                log("== W3 scale")
                rows += w3(targets, sizes, reps, deadline)
            if "W4" in selected:
                log("== W4 latency")
                rows += w4(targets, sizes, reps, deadline)
            if "W1" in selected:
                log("== W1 throughput over SSH")
                rows += w1(targets, sizes, reps, deadline, loaded)
                if loaded:
                    rows += latency_rows(
                        "xqute_ssh ssh (during W1, saturated)",
                        f"exit → FINISHED seen, {sizes.w1_jobs:,} `true`, forks 64",
                        loaded,
                    )
            if "W2" in selected:
                log("== W2 overhead")
                rows += w2(targets, sizes, reps, deadline)
            if "W7" in selected:
                from .bench_badhosts import w7

                log("== W7 bad hosts")
                settle(targets)
                rows += w7(targets, reps, quick, deadline)
    return rows


def _main(argv: Sequence[str]) -> int:
    if len(argv) != 2 or argv[0] != "w3":
        print("usage: python -m benchmarks.bench_ssh w3 JSON", file=sys.stderr)
        return 2
    spec = json.loads(argv[1])
    result = asyncio.run(_w3_worker(spec["servers"], int(spec["n"]), float(spec["window"])))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
