"""10,000 jobs over 3 hosts: all complete; the figures go to the report."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

CONTROLLER = r"""
import asyncio, json, resource, sys, time
from collections import Counter
from xqute_ssh import Xqute
servers, workdir, n = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
async def main():
    xq = Xqute("ssh", forks=96, workdir=workdir, scheduler_opts={"servers": servers})
    sched = xq.scheduler
    spent = [0.0, 0]
    inner = sched.check_all_done
    async def timed(jobs, counter):
        t = time.process_time()
        try:
            return await inner(jobs, counter)
        finally:
            spent[0] += time.process_time() - t
            spent[1] += 1
    sched.check_all_done = timed
    for _ in range(n):
        await xq.feed(["true"])
    rss_fed = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0, c0 = time.monotonic(), time.process_time()
    await xq.run_until_complete()
    print(json.dumps({
        "jobs": n,
        "statuses": Counter(j.status.name for j in xq.jobs),
        "wall_s": round(time.monotonic() - t0, 2),
        "cpu_s": round(time.process_time() - c0, 2),
        "peak_rss_mb_after_feed": round(rss_fed / 1024, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "poll_cycles": spent[1],
        "cpu_ms_per_poll_cycle": round(1000 * spent[0] / max(spent[1], 1), 3),
    }))
asyncio.run(main())
"""


@pytest.mark.slow
async def test_ten_thousand_jobs_over_three_hosts(sshd_cluster_factory, tmp_path: Path) -> None:
    cluster = sshd_cluster_factory(n=3)
    servers = {h.name: {**h.server_spec(), "forks": 32} for h in cluster.hosts}
    script = tmp_path / "ctl.py"
    script.write_text(CONTROLLER)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), json.dumps(servers), str(tmp_path / "wd"), "10000",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    async with asyncio.timeout(900):  # hang guard only
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-3000:]
    figures = json.loads(out.decode().splitlines()[-1])
    print("\nLOAD FIGURES", json.dumps(figures))
    (Path(__file__).parent.parent.parent / ".load-figures.json").write_text(json.dumps(figures))
    assert figures["statuses"] == {"FINISHED": 10000}
