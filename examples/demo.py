"""A real demo: a batch of jobs through xqute_ssh, with their outcomes.

Runs on this machine (the local scheduler).  Files land in ./.xqute-demo.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile

from xqute_ssh import JobStatus, Xqute


async def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    workdir = tempfile.mkdtemp(prefix="xqute-demo-")
    xq = Xqute("local", forks=4, workdir=workdir, error_strategy="retry", num_retries=1)
    for i in range(12):
        await xq.feed(
            ["bash", "-c", 'echo "job $1 on $(hostname) seed=$SEED"; sleep 0.2', "_", str(i)],
            envs={"SEED": str(i * 7)},
        )
    await xq.feed("echo 'this one fails' >&2; exit 3")
    await xq.run_until_complete()
    ok = sum(j.status == JobStatus.FINISHED for j in xq.jobs)
    print(f"\n{ok}/{len(xq.jobs)} jobs finished; metadata in {workdir}")
    for job in xq.jobs[:3] + xq.jobs[-1:]:
        out = (job.stdout_file.path.read_text() or job.stderr_file.path.read_text()).strip()
        print(f"  job {job.index}: {job.status.name:8} rc={await job.get_rc()}  {out}")
    return 0 if ok == len(xq.jobs) - 1 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
