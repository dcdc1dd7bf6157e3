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


def test_importing_the_library_leaves_cloudpathlib_unloaded_until_a_cloud_path_is_used() -> None:
    """cloudpathlib loads boto3's S3 client where boto3 is installed (~0.15 s,
    half of the import): local runs and the CLI's start must not pay it."""
    import subprocess
    import sys

    code = (
        "import sys, xqute_ssh\n"
        "from xqute_ssh.path import SpecPath\n"
        "p = SpecPath('rel/wd') / 'x'\n"
        "assert 'cloudpathlib' not in sys.modules, 'loaded by a local path'\n"
        "c = SpecPath('s3://bucket/wd') / 'x'\n"
        "assert c.is_cloud and not p.is_cloud\n"
        "print(type(c.path).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "S3Path"
