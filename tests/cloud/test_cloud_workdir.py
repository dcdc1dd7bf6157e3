"""Workdirs in cloud storage (S3 via a local moto server)."""

from __future__ import annotations

import asyncio
from typing import Any

from cloudpathlib import CloudPath

from xqute_ssh import JobStatus, Xqute


async def run(xq: Xqute, timeout: float = 120) -> None:
    async with asyncio.timeout(timeout):  # hang guard only
        await xq.run_until_complete()


def text(path: Any) -> str:
    from xqute_ssh.fileio import read_text_sync

    content = read_text_sync(CloudPath(str(path)))
    assert content is not None, f"{path} is missing"
    return content


async def test_local_scheduler_with_s3_workdir(s3_workdir: str) -> None:
    xq = Xqute("local", forks=2, workdir=s3_workdir)
    ok = await xq.feed(["bash", "-c", 'echo "out $1"; echo "err" >&2', "_", "a b"])
    bad = await xq.feed("exit 3")
    await run(xq)
    assert ok.status == JobStatus.FINISHED and bad.status == JobStatus.FAILED
    assert text(ok.stdout_file) == "out a b\n"
    assert text(ok.stderr_file) == "err\n"
    assert text(ok.rc_file).strip() == "0" and text(bad.rc_file).strip() == "3"
    assert text(ok.status_file).strip() == "6" and text(bad.status_file).strip() == "7"
    assert "bash" in text(ok.cmd_file)
    # nothing is left in the local mirror once the files are in the bucket
    assert not xq.scheduler.run_dir(ok).exists()  # type: ignore[attr-defined]


async def test_ssh_scheduler_with_s3_workdir(s3_workdir: str, sshd_cluster) -> None:
    servers = {h.name: h.server_spec() for h in sshd_cluster.hosts}
    xq = Xqute("ssh", forks=4, workdir=s3_workdir, scheduler_opts={"servers": servers})
    jobs = [await xq.feed(["bash", "-c", 'echo "job $1"', "_", str(i)]) for i in range(6)]
    await run(xq)
    assert {j.status for j in jobs} == {JobStatus.FINISHED}
    for j in jobs:
        assert text(j.stdout_file) == f"job {j.index}\n"
        assert text(j.status_file).strip() == "6"
    assert {str(j.jid).split(":")[0] for j in jobs} == {h.name for h in sshd_cluster.hosts}
