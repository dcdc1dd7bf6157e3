"""Small helpers shared by the tests (no fixtures here)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path


def pids_with(marker: str) -> list[int]:
    """Pids of processes whose command line contains ``marker``."""
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    me = os.getpid()
    return [int(p) for p in out.stdout.split() if int(p) != me]


async def wait_until(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    """Hang guard for tests: wait for a condition that an event will make true."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def read(path: Path | os.PathLike[str]) -> str:
    return Path(path).read_text()


async def assert_gone(marker: str, within: float = 10.0) -> None:
    """No process with ``marker`` in its command line is left.

    A KILLed process takes a moment to vanish from /proc, so this waits for it
    (bounded: a process that survived would run for minutes).
    """
    try:
        await wait_until(lambda: pids_with(marker) == [], timeout=within)
    except TimeoutError:
        raise AssertionError(f"still running: {pids_with(marker)} ({marker})") from None
