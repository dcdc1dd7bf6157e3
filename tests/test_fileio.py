"""The small-file writes every job's status, rc and jid go through."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xqute_ssh import fileio


def test_rewrites_leave_exactly_the_new_text(tmp_path: Path) -> None:
    path = tmp_path / "meta" / "job.jid"  # the metadir is made on demand
    fileio.write_text_sync(path, "host2:12345:678901\n")
    fileio.write_text_sync(path, "host2:\n")  # shorter over longer
    assert path.read_text() == "host2:\n"
    fileio.write_text_sync(path, "host1:9:9\n")
    assert path.read_text() == "host1:9:9\n"


def test_a_write_cut_short_leaves_the_old_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A controller killed mid-write (here: the write never happens) leaves
    the old status, never an empty file, which a restart took for "never
    started" and ran the job again."""
    path = tmp_path / "job.status"
    fileio.write_text_sync(path, "4\n")

    def killed(fd: int, data: object) -> int:
        raise KeyboardInterrupt("killed before the write")

    monkeypatch.setattr(os, "write", killed)
    with pytest.raises(KeyboardInterrupt):
        fileio.write_text_sync(path, "6\n")
    monkeypatch.undo()
    assert path.read_text() == "4\n"
    fileio.write_text_sync(path, "6\n")
    assert path.read_text() == "6\n"
