"""One measured controller run, in a process of its own (W8's worker).

``python benchmarks/throughput_worker.py JSON`` with ``PYTHONPATH`` naming the
source tree under test: the run imports ``xqute_ssh`` from there, so the same
worker measures this checkout and a baseline checkout (``--baseline``) side by
side.  It imports nothing from the ``benchmarks`` package for that reason.

A process of its own also makes ``getrusage(RUSAGE_SELF)`` the controller's
CPU alone and its RSS the controller's memory alone.

Modes (the JSON's ``mode``):

* ``run``: feed ``n`` ``true`` jobs and run them to the end; wall, user and
  sys CPU, exit→FINISHED delays; with ``profile``, cProfile's top entries
  instead of timings (a profiled run is slower and not timed).
* ``queue``: feed ``n`` jobs and do not run them: RSS and time per queued job.

The last stdout line is the JSON result.
"""

from __future__ import annotations

import asyncio
import cProfile
import json
import os
import pstats
import resource
import sys
import tempfile
import time
from typing import Any

_SEEN: dict[int, float] = {}


def _cpu() -> tuple[float, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime


def _rss_kib() -> int:
    """Current resident set size (not the peak: imports would hide the jobs)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _probe() -> Any:
    from xqute_ssh import plugin

    class XquteSshBenchSeen:
        name = "xqute-ssh-bench-seen"

        @plugin.impl
        async def on_job_succeeded(scheduler: Any, job: Any) -> None:
            _SEEN[job.index] = time.time()

    return XquteSshBenchSeen


def _delays(jobs: Any) -> list[float]:
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


async def _run(spec: dict[str, Any]) -> dict[str, Any]:
    from xqute_ssh import JobStatus, Xqute

    _SEEN.clear()
    n = int(spec["n"])
    with tempfile.TemporaryDirectory(prefix="xqute-ssh-bench-w8-", dir=spec.get("parent")) as wd:
        t0 = time.perf_counter()
        u0, s0 = _cpu()
        xq = Xqute(
            "ssh",
            forks=int(spec["forks"]),
            workdir=wd,
            plugins=[_probe()],
            scheduler_opts={"servers": spec["servers"]},
        )
        for i in range(n):
            # staggered ends (0 to 0.95 s): latency without saturation
            cmd = ["sleep", f"{(i % 20) * 0.05:.2f}"] if spec.get("stagger") else ["true"]
            await xq.feed(cmd)
        async with asyncio.timeout(float(spec.get("timeout", 300))):
            await xq.run_until_complete()
        u1, s1 = _cpu()
        wall = time.perf_counter() - t0
        bad = sum(1 for j in xq.jobs if j.status != JobStatus.FINISHED)
        delays = _delays(xq.jobs)
    return {
        "wall": wall,
        "user": u1 - u0,
        "sys": s1 - s0,
        "not_finished": bad,
        "delays": delays,
    }


def _profiled(spec: dict[str, Any]) -> dict[str, Any]:
    prof = cProfile.Profile()
    prof.enable()
    result = asyncio.run(_run(spec))
    prof.disable()
    stats = pstats.Stats(prof)
    top = int(spec.get("top", 15))
    entries = []
    # pstats' own table: (cc, nc, tottime, cumtime, callers) per function
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values()) or 1.0
    for key, value in sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:top]:
        filename, line, func = key
        where = _short(filename)
        entries.append(
            {
                "function": f"{where}:{line}({func})",
                "calls": value[1],
                "self_s": value[2],
                "self_share": value[2] / total,
                "cum_s": value[3],
            }
        )
    cum = []
    for key, value in sorted(raw.items(), key=lambda kv: kv[1][3], reverse=True):
        filename, line, func = key
        if "xqute_ssh" not in filename:
            continue
        cum.append({"function": f"{_short(filename)}:{line}({func})", "cum_s": value[3]})
        if len(cum) >= top:
            break
    return {"self": entries, "cumulative": cum, "total_s": total, "wall": result["wall"]}


def _short(filename: str) -> str:
    for marker in ("xqute_ssh/", "asyncssh/", "asyncio/", "site-packages/"):
        i = filename.rfind(marker)
        if i >= 0:
            return filename[i:]
    return os.path.basename(filename)


async def _queue(spec: dict[str, Any]) -> dict[str, Any]:
    from xqute_ssh import Xqute

    n = int(spec["n"])
    with tempfile.TemporaryDirectory(prefix="xqute-ssh-bench-q-", dir=spec.get("parent")) as wd:
        xq = Xqute("ssh", forks=64, workdir=wd, scheduler_opts={"servers": spec["servers"]})
        await xq.feed(["true"])  # the first feed makes the workdir and loads plugins
        base = _rss_kib()
        t0 = time.perf_counter()
        for _ in range(n - 1):
            await xq.feed(["true"])
        feed_s = time.perf_counter() - t0
        after = _rss_kib()
        return {
            "base_rss_kib": base,
            "rss_kib": after,
            "per_job_kib": (after - base) / max(1, n - 1),
            "per_job_s": feed_s / max(1, n - 1),
            "feed_s": feed_s,
            "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        }


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python benchmarks/throughput_worker.py JSON", file=sys.stderr)
        return 2
    spec = json.loads(argv[0])
    if spec["mode"] == "queue":
        result = asyncio.run(_queue(spec))
    elif spec.get("profile"):
        result = _profiled(spec)
    else:
        result = asyncio.run(_run(spec))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
