"""The CLI against GNU parallel itself: same arguments, same stdout.

Each case runs ``parallel --will-cite ARGS`` and ``xqute-ssh run ARGS`` and
compares what they print.  The commands are plain words (GNU parallel joins
them into shell code, we pass them as an argv: for plain words both mean the
same).  Also the pure pieces (dirname, the cross product, --joblog lines).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from xqute_ssh import Job
from xqute_ssh.cli import gnu
from xqute_ssh.cli.joboutput import JobLog, JobOutput

from .test_cli import cli

PARALLEL = shutil.which("parallel")
needs_parallel = pytest.mark.skipif(
    PARALLEL is None and not os.environ.get("CI"),
    reason="GNU parallel is not installed (apt-get install parallel)",
)

AWKWARD_VALUES = [
    "a",
    "dir/b.c",
    "x.y/z",
    "/abs/p.tar.gz",
    "./q",
    ".hidden",
    "a.b/",
    "sp ace.txt",
    "it's",
    "dir/sub/",
]


def run_both(tmp_path: Path, *args: str) -> tuple[str, str]:
    """(ours, GNU parallel's) stdout for the same arguments."""
    assert PARALLEL is not None, "GNU parallel is needed in CI"
    wd = tmp_path / f"wd{len(list(tmp_path.glob('wd*')))}"
    ours = subprocess.run(
        [sys.executable, "-m", "xqute_ssh", "run", "-w", str(wd), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    theirs = subprocess.run(
        [PARALLEL, "--will-cite", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert theirs.returncode == 0, theirs.stderr
    assert ours.returncode == 0, ours.stderr
    return ours.stdout, theirs.stdout


@needs_parallel
def test_values_after_three_colons(tmp_path: Path) -> None:
    ours, theirs = run_both(tmp_path, "-k", "echo", ":::", "a", "b", "c")
    assert ours == theirs == "a\nb\nc\n"
    # without -k: the same lines, in the order the jobs ended
    ours, theirs = run_both(tmp_path, "echo", "x", ":::", "a", "b", "c")
    assert sorted(ours.splitlines()) == sorted(theirs.splitlines())


@needs_parallel
def test_several_sources_are_a_cross_product(tmp_path: Path) -> None:
    ours, theirs = run_both(tmp_path, "-k", "echo", ":::", "a", "b", ":::", "1", "2", "3")
    assert ours == theirs
    assert ours.splitlines()[:2] == ["a 1", "a 2"]
    ours, theirs = run_both(tmp_path, "-k", "echo", "{2}-{1}", ":::", "a", "b", ":::", "1", "2")
    assert ours == theirs == "1-a\n2-a\n1-b\n2-b\n"


@needs_parallel
def test_replacement_strings(tmp_path: Path) -> None:
    ours, theirs = run_both(
        tmp_path,
        "-k",
        "-j1",
        "echo",
        "{}",
        "{.}",
        "{/}",
        "{//}",
        "{/.}",
        "{#}",
        "{%}",
        ":::",
        *AWKWARD_VALUES,
    )
    assert ours == theirs
    ours, theirs = run_both(
        tmp_path,
        "-k",
        "echo",
        "{1/}",
        "{2.}",
        "{1//}",
        "{2/.}",
        ":::",
        "d/a.x",
        "e/b",
        ":::",
        "f/c.tar.gz",
    )
    assert ours == theirs


@needs_parallel
def test_four_colons_read_files(tmp_path: Path) -> None:
    (tmp_path / "in1").write_text("a\nb c\n")
    (tmp_path / "in2").write_text("1\n2\n")
    ours, theirs = run_both(tmp_path, "-k", "echo", "{1}/{2}", "::::", "in1", "in2")
    assert ours == theirs == "a/1\na/2\nb c/1\nb c/2\n"


@needs_parallel
def test_keep_order_holds_back_early_ends(tmp_path: Path) -> None:
    script = tmp_path / "sleep-echo"
    script.write_text('#!/bin/sh\nsleep "$1"\necho "slept $1"\necho "to stderr $1" >&2\n')
    script.chmod(0o755)
    args = ["-j3", str(script), ":::", "0.6", "0.1", "0.3"]
    ours, theirs = run_both(tmp_path, "-k", *args)
    assert ours == theirs == "slept 0.6\nslept 0.1\nslept 0.3\n"
    ours, theirs = run_both(tmp_path, *args)  # as they end: 0.1 first
    assert ours == theirs == "slept 0.1\nslept 0.3\nslept 0.6\n"


@needs_parallel
def test_tag(tmp_path: Path) -> None:
    ours, theirs = run_both(tmp_path, "-k", "--tag", "seq", "{#}", ":::", "a", "b c", "d")
    assert ours == theirs
    assert ours.splitlines()[1:3] == ["b c\t1", "b c\t2"]
    ours, theirs = run_both(tmp_path, "-k", "--tag", "echo", ":::", "a", "b", ":::", "1")
    assert ours == theirs


def test_ungroup_prints_everything(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    code = cli(
        "run",
        "-u",
        "-w",
        tmp_path / "wd",
        "--",
        "bash",
        "-c",
        'echo 1; echo 2; echo "$1"',
        "_",
        ":::",
        "a",
        "b",
    )
    assert code == 0
    lines = capfd.readouterr().out.splitlines()
    assert sorted(lines) == sorted(["1", "2", "a", "1", "2", "b"])


class Collect:
    def __init__(self) -> None:
        self.out = b""

    def write(self, data: bytes, err: bool) -> None:
        if not err:
            self.out += data


async def test_ungroup_prints_output_written_between_submitted_and_running_once(
    tmp_path: Path,
) -> None:
    """The printer hears "started" at submission and again when the job is seen
    running; output the job wrote in between was printed twice (a CI flake of
    the test above)."""
    job = Job(0, ["true"], tmp_path)
    job.metadir.path.mkdir()
    sink = Collect()
    printer = JobOutput(sink, total=1, ungroup=True)
    printer.started(job)  # submitted
    job.stdout_file.path.write_bytes(b"early\n")
    await printer._follow(job)  # what follow_running does every 0.1 s
    printer.started(job)  # seen running
    with job.stdout_file.path.open("ab") as fh:
        fh.write(b"late\n")
    assert await printer.ended(job) == len(b"early\nlate\n")
    assert sink.out == b"early\nlate\n"
    # a retry starts from the beginning of its fresh files
    printer.requeued(job.index)
    job.stdout_file.path.write_bytes(b"again\n")
    printer.started(job)
    await printer.ended(job)
    assert sink.out == b"early\nlate\nagain\n"


def test_slots_are_distinct_among_running_jobs(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # each job holds its slot while it sleeps, so two running at once differ
    assert (
        cli(
            "run",
            "-j2",
            "-k",
            "-w",
            tmp_path / "wd",
            "--",
            "bash",
            "-c",
            'echo "$1"; sleep 0.3',
            "_",
            "{%}",
            ":::",
            "a",
            "b",
            "c",
            "d",
        )
        == 0
    )
    slots = capfd.readouterr().out.split()
    assert set(slots) <= {"1", "2"} and slots[0] != slots[1]


def test_without_a_command_the_values_are_commands(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    assert cli("run", "-k", "-w", tmp_path / "wd", ":::", "echo one", "echo two | tr a-z A-Z") == 0
    assert capfd.readouterr().out == "one\nTWO\n"


def test_bad_sources_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("run", "-w", tmp_path / "wd", "echo", "{3}", ":::", "a", ":::", "b") == 2
    assert "{3}" in capsys.readouterr().err
    assert cli("run", "-w", tmp_path / "wd", "echo", ":::") == 2
    assert "::: give at least one value" in capsys.readouterr().err
    assert cli("run", "-w", tmp_path / "wd", "echo", "::::", tmp_path / "missing") == 2
    assert "missing" in capsys.readouterr().err


def test_joblog_in_gnu_format(tmp_path: Path) -> None:
    log = tmp_path / "joblog"
    code = cli(
        "run",
        "-k",
        "--joblog",
        log,
        "-w",
        tmp_path / "wd",
        "sh",
        "-c",
        'echo out; exit "$1"',
        "_",
        "{}",
        ":::",
        "0",
        "3",
    )
    assert code == 1
    lines = log.read_text().splitlines()
    assert lines[0].split("\t") == [
        "Seq",
        "Host",
        "Starttime",
        "JobRuntime",
        "Send",
        "Receive",
        "Exitval",
        "Signal",
        "Command",
    ]
    rows = sorted(line.split("\t") for line in lines[1:])
    assert [(r[0], r[1], r[4], r[5], r[6], r[7]) for r in rows] == [
        ("1", ":", "0", "4", "0", "0"),
        ("2", ":", "0", "4", "3", "0"),
    ]
    assert rows[1][8] == "sh -c 'echo out; exit \"$1\"' _ 3"
    assert float(rows[0][2]) > 1e9 and float(rows[0][3]) >= 0
    assert JobLog.line(5, "h", 0.0, 1.0, 0, -15, "x").split("\t")[6:8] == ["-1", "15"]


def test_dirname_and_cross_product_pieces() -> None:
    assert [gnu.dirname(v) for v in ["a", "a/b", "/a", "/", "", "a/b/", "a//b"]] == [
        ".",
        "a",
        "/",
        "/",
        ".",
        "a",
        "a",
    ]
    assert gnu.combinations([["a", "b"], ["1", "2"]]) == [
        ("a", "1"),
        ("a", "2"),
        ("b", "1"),
        ("b", "2"),
    ]
    assert gnu.expand(["cp", "{}", "{.}.bak"], ["x.txt"], 1) == ["cp", "x.txt", "x.bak"]
    assert gnu.expand(["gzip"], ["f"], 1) == ["gzip", "f"]


def test_server_slots_and_lists() -> None:
    from xqute_ssh.cli.args import scheduler_options

    _, opts, forks, _ = scheduler_options(["8/alice@n1,2/n2:2222"], None)
    assert opts["servers"] == {
        "alice@n1": {"host": "n1", "user": "alice", "forks": 8},
        "n2:2222": {"host": "n2", "port": 2222, "forks": 2},
    }
    assert forks == 10


def test_a_reader_that_goes_away_stops_nothing(tmp_path: Path) -> None:
    """`xqute-ssh run ... | head -1`: the jobs still run to the end, no traceback."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "xqute_ssh",
            "run",
            "-k",
            "-j1",
            "-w",
            str(tmp_path / "wd"),
            "--",
            "bash",
            "-c",
            "seq 2000; sleep 0.05",
            "_",
            ":::",
            *map(str, range(6)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline() == b"1\n"
    proc.stdout.close()  # as `head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "6 jobs: 6 finished" in err
