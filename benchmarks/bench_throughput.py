"""W8: throughput toward the floor (issue 17), quick to run on its own.

``python -m benchmarks --only W8 [--baseline PATH]``

One 16-host loopback cluster; the 2-host runs use its first two hosts while
the other 14 sshd listen idle.  Each repetition runs, back to back:

* 1,000 ``true`` jobs, forks 64, over 2 hosts with the workdir on tmpfs
  (/dev/shm), on the default temp dir (ext4 here), and over 16 hosts on tmpfs;
* 128 staggered ``sleep`` jobs (not saturated) for exit→FINISHED;
* the floor (``/bin/true`` down one open ``sh`` per host) over 2 and 16 hosts.

Every controller run is a subprocess (``throughput_worker.py``) so that
``getrusage`` is the controller's alone; with ``--baseline PATH`` the same
runs also use ``xqute_ssh`` from that checkout, alternating with ours in each
repetition, and the table gives ours/baseline per repetition.

Once per tree: processes per job on the hosts (``strace -f`` on each host's
listening sshd counts every fork and exec; two batch sizes, so connection
set-up cancels out), 100,000 queued jobs (RSS and time per queued job), and a
cProfile of the controller during the 1,000-job run (top entries printed).
GNU parallel runs once (64 jobs, extrapolated) unless ``--quick``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .common import (
    REPO_ROOT,
    Deadline,
    Row,
    WorkerError,
    log,
    median,
    pairwise_ratios,
    percentile,
    repetitions,
    run_json,
)

WORKER = Path(__file__).resolve().parent / "throughput_worker.py"
FORKS = 64
N_JOBS = 1_000
MANY_HOSTS = 16
RUN_TIMEOUT = 300.0


def _worker(tree: Path, spec: dict[str, Any], timeout: float = RUN_TIMEOUT) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree)
    return run_json([sys.executable, str(WORKER), json.dumps(spec)], timeout=timeout, env=env)


def _servers(targets: Sequence[Any]) -> dict[str, dict[str, Any]]:
    return {t.name: dict(t.spec) for t in targets}


# ------------------------------------------------------ processes per job
_CLONE = re.compile(r"^(\d+)\s+(?:<\.\.\. )?(clone3?|v?fork)\b.*= (\d+)$")
_EXEC_CALL = re.compile(r'^(\d+)\s+execve\("([^"]*)"')
_EXEC_DONE = re.compile(r"^(\d+)\s+(?:<\.\.\. execve resumed>|execve\().*= 0$")


def parse_strace(text: str) -> tuple[int, Counter[str]]:
    """Processes created (successful forks, threads excluded) and execs by program."""
    forks = 0
    execs: Counter[str] = Counter()
    pending: dict[str, str] = {}
    for line in text.splitlines():
        m = _CLONE.match(line)
        if m and "CLONE_THREAD" not in line and int(m.group(3)) > 0:
            forks += 1
            continue
        call = _EXEC_CALL.match(line)
        if call:
            pending[call.group(1)] = os.path.basename(call.group(2))
        done = _EXEC_DONE.match(line)
        if done and done.group(1) in pending:
            execs[pending.pop(done.group(1))] += 1
    return forks, execs


@contextlib.contextmanager
def traced(pids: Sequence[int], out: Path) -> Iterator[None]:
    """``strace -f`` on ``pids`` (each host's listening sshd) for the block."""
    argv = ["strace", "-f", "-e", "trace=clone,clone3,fork,vfork,execve", "-o", str(out)]
    for pid in pids:
        argv += ["-p", str(pid)]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    attached = 0
    while attached < len(pids):  # strace says so once per process it attached to
        line = proc.stderr.readline()
        if not line:
            raise WorkerError("strace exited before attaching (is ptrace allowed?)")
        attached += "attached" in line
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # detaches and flushes
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def processes_per_job(tree: Path, targets: Sequence[Any], sizes: tuple[int, int]) -> dict[str, Any]:
    """Forks per job on the hosts: (forks at n2 - forks at n1) / (n2 - n1)."""
    pids = [t.host._sshd_pid for t in targets]
    counts = []
    execs_per: list[Counter[str]] = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="bench-strace-") as tmp:
            out = Path(tmp) / "trace"
            with traced(pids, out):
                _worker(
                    tree,
                    {
                        "mode": "run",
                        "n": n,
                        "forks": FORKS,
                        "servers": _servers(targets),
                        "parent": "/dev/shm",
                    },
                )
            forks, execs = parse_strace(out.read_text(errors="replace"))
        counts.append(forks)
        execs_per.append(execs)
    span = sizes[1] - sizes[0]
    per_exec = {
        name: (execs_per[1][name] - execs_per[0][name]) / span
        for name in set(execs_per[0]) | set(execs_per[1])
    }
    return {
        "per_job": (counts[1] - counts[0]) / span,
        "execs": {k: v for k, v in sorted(per_exec.items()) if abs(v) >= 0.05},
    }


# ------------------------------------------------------------ the workload
def _floor(targets: Sequence[Any], n: int) -> float:
    from .bench_ssh import _floor as floor_run

    return asyncio.run(floor_run(targets, n))


def _run_spec(
    servers: dict[str, Any], parent: str | None, stagger: bool = False, n: int = N_JOBS
) -> dict[str, Any]:
    return {
        "mode": "run",
        "n": 128 if stagger else n,
        "stagger": stagger,
        "forks": FORKS,
        "servers": servers,
        "parent": parent,
    }


def profile_table(label: str, prof: dict[str, Any]) -> str:
    lines = [
        f"**{label}** (cProfile of the event loop's thread, {prof['total_s']:.2f} s "
        "profiled, time waiting in `epoll` included; worker threads not profiled; "
        f"the profiled run took {prof['wall']:.1f} s)\n",
        "| function | calls | self s | share |",
        "|---|---:|---:|---:|",
    ]
    for e in prof["self"]:
        lines.append(
            f"| `{e['function']}` | {e['calls']} | {e['self_s']:.3f} | {100 * e['self_share']:.1f} % |"
        )
    lines += ["", "Cumulative, xqute_ssh functions:", "", "| function | cum s |", "|---|---:|"]
    lines += [f"| `{e['function']}` | {e['cum_s']:.3f} |" for e in prof["cumulative"]]
    return "\n".join(lines) + "\n"


def run_w8(
    reps: int, quick: bool, deadline: Deadline, baseline: Path | None
) -> tuple[list[Row], str]:
    from xqute_ssh.testing import SshCluster

    from .bench_ssh import SSHD_CONFIG, Target, run_parallel, settle

    trees: list[tuple[str, Path]] = [("xqute_ssh (this tree)", REPO_ROOT)]
    if baseline is not None:
        trees.append((f"xqute_ssh baseline ({baseline})", baseline.resolve()))
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    n = N_JOBS
    cases = [
        ("2h-tmpfs", f"wall, {n:,} `true`, 2 hosts, forks 64, workdir tmpfs", 2, shm),
        ("2h-ext4", f"wall, {n:,} `true`, 2 hosts, forks 64, workdir default temp dir", 2, None),
        ("16h-tmpfs", f"wall, {n:,} `true`, 16 hosts, forks 64, workdir tmpfs", MANY_HOSTS, shm),
    ]
    # rows[tree label][key]
    rows: dict[str, dict[str, Row]] = {}
    for label, _ in trees:
        r: dict[str, Row] = {}
        for key, measure_s, _h, _p in cases:
            r[key] = Row("W8", label, measure_s, "s")
            r[key + "-cpu"] = Row(
                "W8", label, f"controller CPU per job ({key})", "ms", note="user+sys / jobs"
            )
        r["marginal-cpu"] = Row(
            "W8",
            label,
            f"controller CPU per job beyond the first {n:,} (2h-tmpfs)",
            "ms",
            note=f"(CPU of {2 * n:,} jobs - CPU of {n:,}) / {n:,}: without the once-per-run "
            "costs (imports, logins, relays) that the per-job figure above spreads",
        )
        r["ratio16"] = Row(
            "W8",
            label,
            "16-host speed / 2-host speed (tmpfs, same repetition)",
            "",
            lower_is_better=False,
            note="goal ≥ 0.9",
        )
        r["lat-med"] = Row("W8", label, "exit → FINISHED, 128 staggered `sleep`: median", "ms")
        r["lat-p95"] = Row("W8", label, "exit → FINISHED, 128 staggered `sleep`: p95", "ms")
        r["satlat-med"] = Row(
            "W8", label, f"exit → FINISHED during {n:,} `true` (2h tmpfs): median", "ms"
        )
        r["satlat-p95"] = Row(
            "W8", label, f"exit → FINISHED during {n:,} `true` (2h tmpfs): p95", "ms"
        )
        rows[label] = r
    floor2 = Row(
        "W8", "floor: /bin/true via one open sh per host", cases[0][1] + " (no files)", "s"
    )
    floor16 = Row(
        "W8", "floor: /bin/true via one open sh per host", cases[2][1] + " (no files)", "s"
    )
    profile_md: list[str] = []
    out: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="xqute-ssh-bench-w8-") as base:
        with SshCluster(Path(base) / "hosts", n=MANY_HOSTS, sshd_config=SSHD_CONFIG) as c:
            targets = [Target.from_host(h) for h in c.hosts]
            two = targets[:2]
            srv = {2: _servers(two), MANY_HOSTS: _servers(targets)}
            first = rows[trees[0][0]]["2h-tmpfs"]
            for rep in repetitions(reps, deadline, first):
                for label, tree in trees:
                    r = rows[label]
                    for key, _m, hosts, parent in cases:
                        settle(targets)
                        res = _worker(tree, _run_spec(srv[hosts], parent))
                        r[key].runs.append(res["wall"])
                        r[key + "-cpu"].runs.append(1000 * (res["user"] + res["sys"]) / n)
                        if res["not_finished"]:
                            r[key].note += f" run {rep + 1}: {res['not_finished']} not FINISHED."
                        if key == "2h-tmpfs":
                            r["satlat-med"].runs.append(1000 * (median(res["delays"]) or 0))
                            r["satlat-p95"].runs.append(1000 * (percentile(res["delays"], 95) or 0))
                        log(
                            f"  W8 rep {rep + 1} {label} {key}: {res['wall']:.2f}s wall, "
                            f"{res['user']:.2f}+{res['sys']:.2f}s CPU"
                        )
                    r["ratio16"].runs.append(r["2h-tmpfs"].runs[-1] / r["16h-tmpfs"].runs[-1])
                    settle(targets)
                    res = _worker(tree, _run_spec(srv[2], shm, n=2 * n))
                    once = r["2h-tmpfs-cpu"].runs[-1] * n / 1000  # CPU s of the n-job run
                    r["marginal-cpu"].runs.append(1000 * (res["user"] + res["sys"] - once) / n)
                    log(
                        f"  W8 rep {rep + 1} {label} 2h-tmpfs x2: {res['wall']:.2f}s wall, "
                        f"{res['user']:.2f}+{res['sys']:.2f}s CPU"
                    )
                    settle(targets)
                    res = _worker(tree, _run_spec(srv[2], shm, stagger=True))
                    r["lat-med"].runs.append(1000 * (median(res["delays"]) or 0))
                    r["lat-p95"].runs.append(1000 * (percentile(res["delays"], 95) or 0))
                settle(targets)
                floor2.runs.append(_floor(two, n))
                floor16.runs.append(_floor(targets, n))
                log(f"  W8 rep {rep + 1} floor {floor2.runs[-1]:.2f}s / {floor16.runs[-1]:.2f}s")

            ours = rows[trees[0][0]]
            floor2.ratios = pairwise_ratios(ours["2h-tmpfs"].runs, floor2.runs)
            floor16.ratios = pairwise_ratios(ours["16h-tmpfs"].runs, floor16.runs)
            if len(trees) > 1:
                theirs = rows[trees[1][0]]
                for key, row in theirs.items():
                    row.ratios = pairwise_ratios(ours[key].runs, row.runs)

            par = None
            if not quick:
                pn = 64
                settle(targets)
                pr = run_parallel(two, "true", pn, FORKS // 2, max(30.0, deadline.left()))
                par = Row(
                    "W8",
                    "GNU parallel --sshlogin 32/host",
                    cases[0][1].replace("workdir tmpfs", "no files") + " (extrapolated)",
                    "s",
                    runs=[pr.extrapolate(pn, n)],
                    note=f"one run of {pn} jobs: start-up {pr.startup:.1f} s + the span scaled",
                )
                par.ratios = pairwise_ratios(ours["2h-tmpfs"].runs[-1:], par.runs)

            procs: dict[str, Row] = {}
            queue: dict[str, list[Row]] = {}
            qn = 20_000 if quick else 100_000
            for label, tree in trees:
                settle(targets)
                try:
                    pj = processes_per_job(tree, two, (40, 240))
                    procs[label] = Row(
                        "W8",
                        label,
                        "processes per job on the host (forks seen by strace)",
                        "",
                        runs=[pj["per_job"]],
                        note="execs per job: "
                        + ", ".join(f"{k} {v:.2f}" for k, v in pj["execs"].items()),
                    )
                except (WorkerError, OSError) as exc:
                    procs[label] = Row("W8", label, "processes per job", "", note=f"not run: {exc}")
                log(f"  W8 {label}: processes per job {procs[label].runs} {procs[label].note}")
                q = _worker(tree, {"mode": "queue", "n": qn, "servers": srv[2], "parent": shm})
                queue[label] = [
                    Row(
                        "W8",
                        label,
                        f"RSS per queued job ({qn:,} queued)",
                        "KiB",
                        runs=[q["per_job_kib"]],
                    ),
                    Row(
                        "W8",
                        label,
                        "time per queued job (feed)",
                        "ms",
                        runs=[1000 * q["per_job_s"]],
                    ),
                    Row(
                        "W8",
                        label,
                        f"controller RSS with {qn:,} queued",
                        "MiB",
                        runs=[q["rss_kib"] / 1024],
                        note=f"{q['base_rss_kib'] / 1024:.0f} MiB before feeding; workdir on tmpfs",
                    ),
                ]
                log(f"  W8 {label}: queue {q}")
                settle(targets)
                prof = _worker(tree, {**_run_spec(srv[2], shm), "profile": True, "top": 20})
                profile_md.append(profile_table(label, prof))
            if len(trees) > 1:
                a, b = trees[0][0], trees[1][0]
                procs[b].ratios = pairwise_ratios(procs[a].runs, procs[b].runs)
                for ra, rb in zip(queue[a], queue[b], strict=True):
                    rb.ratios = pairwise_ratios(ra.runs, rb.runs)
            settle(targets)

    for key in (
        "2h-tmpfs",
        "2h-ext4",
        "16h-tmpfs",
        "ratio16",
        "2h-tmpfs-cpu",
        "2h-ext4-cpu",
        "16h-tmpfs-cpu",
        "marginal-cpu",
        "lat-med",
        "lat-p95",
        "satlat-med",
        "satlat-p95",
    ):
        for label, _ in trees:
            out.append(rows[label][key])
        if key == "2h-tmpfs":
            out.append(floor2)
            if par is not None:
                out.append(par)
        if key == "16h-tmpfs":
            out.append(floor16)
    for label, _ in trees:
        out.append(procs[label])
    out.append(
        Row("W8", "floor: /bin/true via one open sh per host", "processes per job", "", runs=[1.0])
    )
    for i in range(3):
        for label, _ in trees:
            out.append(queue[label][i])
    section = "\n".join(profile_md)
    return out, section
