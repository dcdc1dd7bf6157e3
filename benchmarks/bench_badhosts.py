"""W7: bad hosts in the list cost the run their share and no more.

The same batch of short jobs runs over the healthy loopback hosts alone, then
over the same hosts plus one refused port (nothing listens) and one silent
host (a socket that accepts TCP but never sends an SSH banner), back to back
in each repetition.  The ratio is the bad-hosts run's speed over the healthy
run's (1.0: no cost; the target is at least 0.8 for 300+ jobs).

``python -m benchmarks --only W7`` runs only this case.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .common import Deadline, Row, log

N_JOBS = 300
N_JOBS_QUICK = 300
FORKS = 32
CONNECT_TIMEOUT = 10.0  # the default: the silent host's probes take this long
RUN_TIMEOUT = 180.0


@contextlib.contextmanager
def bad_ports(address: str = "127.0.0.1") -> Iterator[tuple[int, int]]:
    """(refused port, silent port): nothing listens on the first; the second
    completes TCP handshakes in the kernel and never says anything."""
    refused = socket.socket()
    refused.bind((address, 0))
    refused_port = refused.getsockname()[1]
    refused.close()  # bound then closed: connecting is refused
    silent = socket.socket()
    silent.bind((address, 0))
    silent.listen(64)  # never accept(): no banner ever
    try:
        yield refused_port, silent.getsockname()[1]
    finally:
        silent.close()


async def _run(servers: dict[str, dict[str, Any]], n: int) -> tuple[float, int]:
    from xqute_ssh import JobStatus, Xqute

    with tempfile.TemporaryDirectory(prefix="xqute-ssh-bench-w7-") as wd:
        started = time.perf_counter()
        xq = Xqute("ssh", forks=FORKS, workdir=wd, scheduler_opts={"servers": servers})
        for _ in range(n):
            await xq.feed(["true"])
        async with asyncio.timeout(RUN_TIMEOUT):
            await xq.run_until_complete()
        wall = time.perf_counter() - started
    bad = sum(1 for j in xq.jobs if j.status != JobStatus.FINISHED)
    return wall, bad


def run_once(servers: dict[str, dict[str, Any]], n: int) -> tuple[float, int]:
    """One run in a fresh event loop; (wall seconds, jobs not FINISHED)."""
    try:
        return asyncio.run(_run(servers, n))
    except TimeoutError:
        return float("nan"), n


def w7(targets: Sequence[Any], reps: int, quick: bool, deadline: Deadline) -> list[Row]:
    n = N_JOBS_QUICK if quick else N_JOBS
    healthy = {t.name: {**t.spec, "connect_timeout": CONNECT_TIMEOUT} for t in targets}
    template = targets[0].spec
    rate_ok: list[float] = []
    rate_bad: list[float] = []
    ratios: list[float] = []
    notes: list[str] = []
    with bad_ports() as (refused, silent):
        servers_bad = {
            **healthy,
            "refused": {**template, "host": "127.0.0.1", "port": refused,
                        "connect_timeout": CONNECT_TIMEOUT},
            "silent": {**template, "host": "127.0.0.1", "port": silent,
                       "connect_timeout": CONNECT_TIMEOUT},
        }
        for rep in range(reps):
            if deadline.expired() and rep:
                notes.append(f"budget reached after {rep} repetition(s)")
                break
            wall_ok, bad_ok = run_once(healthy, n)
            wall_bad, bad_bad = run_once(servers_bad, n)
            log(f"W7 rep {rep + 1}: healthy {wall_ok:.2f}s, with bad hosts {wall_bad:.2f}s")
            if bad_ok or bad_bad:
                notes.append(f"rep {rep + 1}: {bad_ok} / {bad_bad} jobs not FINISHED")
            rate_ok.append(n / wall_ok)
            rate_bad.append(n / wall_bad)
            ratios.append(wall_ok / wall_bad)
    what = f"{n:,} `true`, forks {FORKS}"
    return [
        Row("W7", f"xqute_ssh ssh, {len(targets)} healthy hosts", f"throughput, {what}",
            "jobs/s", runs=rate_ok, lower_is_better=False),
        Row("W7", "xqute_ssh ssh, + 1 refused + 1 silent host", f"throughput, {what}",
            "jobs/s", runs=rate_bad, lower_is_better=False,
            note="; ".join(notes)),
        Row("W7", "bad-hosts speed / healthy speed", f"same repetition, {what}", "ratio",
            runs=ratios, lower_is_better=False,
            note="target >= 0.8; the silent host's connect timeout is "
            f"{CONNECT_TIMEOUT:g} s (the default)"),
    ]


def main() -> None:  # pragma: no cover - a manual entry point
    from .bench_ssh import cluster

    with tempfile.TemporaryDirectory() as base, cluster(Path(base)) as targets:
        for row in w7(targets, 3, False, Deadline(600)):
            print(row.subject, [round(x, 3) for x in row.runs], row.note)


if __name__ == "__main__":
    main()
