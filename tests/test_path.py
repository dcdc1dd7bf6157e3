"""SpecPath: a job file as the controller sees it and as its host sees it."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from xqute_ssh.path import SpecPath


def test_join_keeps_both_sides() -> None:
    wd = SpecPath("/data/wd", mounted="/mnt/wd")
    rc = wd / "7" / "job.rc"
    assert rc.path == Path("/data/wd/7/job.rc")
    assert rc.mounted == PurePosixPath("/mnt/wd/7/job.rc")
    assert wd.joinpath("7", "job.rc") == rc
    assert rc.name == "job.rc"
    assert rc.parent.mounted == PurePosixPath("/mnt/wd/7")


def test_unmapped_path_is_the_same_on_the_host() -> None:
    rc = SpecPath("/data/wd") / "7" / "job.rc"
    assert str(rc) == "/data/wd/7/job.rc"
    assert rc.mounted == PurePosixPath("/data/wd/7/job.rc")
    assert repr(rc) == "SpecPath('/data/wd/7/job.rc')"


def test_joined_paths_are_real_local_paths(tmp_path: Path) -> None:
    f = SpecPath(tmp_path) / "a" / "b.txt"
    f.path.parent.mkdir()
    f.write_text("x")  # delegated to the local side
    assert (tmp_path / "a" / "b.txt").read_text() == "x"
