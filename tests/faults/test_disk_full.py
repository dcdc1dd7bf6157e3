"""The workdir's disk fills up mid-run: no crash, no hang, clear errors."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
from pathlib import Path

import pytest

from xqute_ssh import JobStatus, Xqute

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture
def small_disk(tmp_path: Path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def test_disk_full_workdir(small_disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="xqute_ssh")
    xq = Xqute(workdir=small_disk / "wd", forks=1)
    first = await xq.feed(["echo", "fine"])
    flood = await xq.feed(["head", "-c", "4M", "/dev/zero"])
    after = await xq.feed(["echo", "late"])
    async with asyncio.timeout(60):  # hang guard
        await xq.run_until_complete()
    # what was written before the disk filled is intact
    assert first.status == JobStatus.FINISHED
    assert first.stdout_file.path.read_text() == "fine\n"
    assert (first.metadir.path / "job.rc").read_text() == "0\n"
    # the flooding job failed; every job ended with a final status
    assert flood.status == JobStatus.FAILED
    assert after.status in (JobStatus.FINISHED, JobStatus.FAILED)
    # status files on disk are whole or absent, never garbage
    for job in xq.jobs:
        path = job.status_file.path
        if path.exists() and path.read_text():
            assert JobStatus.parse(path.read_text()) is not None
