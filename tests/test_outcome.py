"""A script learns how its run went: RunOutcome, and a WARNING per final failure."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from xqute_ssh import RunOutcome, Xqute


async def test_outcome_lists_failed_jobs_and_warns_with_rc_and_stderr(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    xq = Xqute("local", forks=2, workdir=tmp_path / "wd", error_strategy="retry", num_retries=1)
    await xq.feed(["true"])
    await xq.feed(["bash", "-c", "echo first >&2; echo boom >&2; exit 3"])
    await xq.feed(["true"])
    with caplog.at_level(logging.INFO, logger="xqute_ssh"):
        outcome = await xq.run_until_complete()
    assert isinstance(outcome, RunOutcome)
    assert not outcome.ok and outcome.exit_code == 1
    assert [j.index for j in outcome.failed] == [1]
    assert [j.index for j in outcome.finished] == [0, 2]
    assert str(outcome) == "3 jobs: 2 finished, 1 failed, 0 not run (failed: 1)"
    finals = [r for r in caplog.records if "failed for good" in r.getMessage()]
    assert len(finals) == 1  # the retry is not final
    assert finals[0].levelno == logging.WARNING
    assert finals[0].getMessage() == "job 1 failed for good on local (rc 3): boom"


async def test_outcome_ok(tmp_path: Path) -> None:
    xq = Xqute("local", workdir=tmp_path / "wd")
    await xq.feed(["true"])
    await xq.run_until_complete(keep_feeding=True)
    outcome = await xq.stop_feeding()
    assert outcome.ok and outcome.exit_code == 0 and outcome.failed == []


def test_a_script_exits_non_zero_and_says_why_without_logging_setup(tmp_path: Path) -> None:
    """The README's pattern: no logging configured, yet the failure is shown."""
    script = tmp_path / "s.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import asyncio
            from xqute_ssh import Xqute

            async def main():
                xq = Xqute("local", workdir={str(tmp_path / "wd")!r})
                await xq.feed(["bash", "-c", "echo no such input >&2; exit 2"])
                outcome = await xq.run_until_complete()
                print(outcome)
                return outcome.exit_code

            raise SystemExit(asyncio.run(main()))
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1
    assert "job 0 failed for good on local (rc 2): no such input" in proc.stderr
    assert "1 job: 0 finished, 1 failed" in proc.stdout
