"""The workdir's disk fills up mid-run: no crash, no hang, clear errors."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
from pathlib import Path

import pytest

from xqute_ssh import Job, JobStatus, LocalScheduler, Xqute

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture
def small_disk(tmp_path: Path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:  # root, but in a container that may not mount
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
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


def _fill(directory: Path) -> None:
    """Write until the filesystem refuses: the disk is now really full."""
    with open(directory / "filler", "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass


class _FillsDiskOnStart(LocalScheduler):
    """The disk fills the moment a job has started, before its id is recorded."""

    name = "local"

    async def submit_job(self, job: Job) -> str:
        jid = await super().submit_job(job)
        if job.index == 0:
            await asyncio.to_thread(_fill, self.workdir.path)
        return jid


async def test_disk_full_between_start_and_job_id(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="xqute_ssh")
    xq = Xqute(_FillsDiskOnStart, workdir=small_disk / "wd", forks=2)
    job = await xq.feed(["sleep", "0.2"])
    async with asyncio.timeout(60):  # hang guard
        await xq.run_until_complete()
    # the job ran and was tracked to its end by the id held in memory
    assert job.status == JobStatus.FINISHED
    jid_path = job.jid_file.path  # the write really failed
    assert not jid_path.exists() or not jid_path.read_text().strip()
    assert any("cannot record its job id" in r.getMessage() for r in caplog.records)


async def test_retry_archive_refused_keeps_the_attempt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="xqute_ssh")
    xq = Xqute(workdir=tmp_path / "wd", error_strategy="retry", num_retries=2)
    # job.retry made a plain file: the failed attempt cannot be set aside
    job = await xq.feed(
        'echo attempt-output; : > "$XQUTE_JOB_METADIR/job.retry"; exit 3'
    )
    async with asyncio.timeout(60):  # hang guard
        await xq.run_until_complete()
    assert job.status == JobStatus.FAILED
    assert job.trial_count == 0  # not retried over its own files
    assert job.stdout_file.path.read_text() == "attempt-output\n"
    assert (job.metadir.path / "job.rc").read_text() == "3\n"
    assert any("cannot archive the failed attempt" in r.getMessage() for r in caplog.records)
