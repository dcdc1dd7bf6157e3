"""The ``xqute-ssh`` command line through the local scheduler.

Most tests call ``main([...])`` in-process (stdout captured, so not a
terminal: the plain output); a few run ``python -m xqute_ssh`` to see the
real exit status, the absence of ANSI codes, and Ctrl-C.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from xqute_ssh.cli import main
from xqute_ssh.cli.args import (
    DEFAULT_FORKS_PER_SERVER,
    UsageError,
    build_parser,
    make_plan,
    scheduler_options,
    substitute,
)
from xqute_ssh.cli.progress import LiveView
from xqute_ssh.cli.tally import Outcome, Tally
from xqute_ssh.cli.workdir import host_from_jid

from .helpers import pids_with

ANSI = re.compile(r"\x1b\[")
PLAIN_LINE = re.compile(r"^job (\d+) (FINISHED|FAILED|KILLED|SKIPPED) rc=(-?\d+|-) host=(\S+)$")
ECHO_ARG = [sys.executable, "-c", "import sys; sys.stdout.write(sys.argv[1])"]

# Names that break naive quoting; the last one is not valid UTF-8.
AWKWARD = [
    b"with space",
    b"single'quote",
    b'double"quote',
    b"dollar $HOME",
    b"backtick `id`",
    b"subst $(id)",
    b"semi;pipe|amp&",
    b"back\\slash",
    "unicode é ü 漢字".encode(),
    b"  leading and trailing  ",
    b"*",
    b"-n",
    b"brace {} inside",
    b"latin1-\xe9",
]


@pytest.fixture(autouse=True)
def _no_forced_colour(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)


def cli(*argv: str | os.PathLike[str]) -> int:
    return main([os.fspath(a) for a in argv])


def plain_lines(out: str) -> dict[int, tuple[str, str, str]]:
    """job index -> (outcome, rc, host) from the plain per-job lines."""
    found = {}
    for line in out.splitlines():
        m = PLAIN_LINE.match(line)
        if m:
            found[int(m[1])] = (m[2], m[3], m[4])
    return found


# ------------------------------------------------------------ exit status
def test_all_succeed_exit_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("run", "-w", tmp_path / "wd", "--", "true") == 0
    out = capsys.readouterr().err
    assert plain_lines(out) == {0: ("FINISHED", "0", "local")}
    assert out.splitlines()[-1].startswith("1 job: 1 finished, 0 failed")


def test_a_failure_exits_1_and_is_summarised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = tmp_path / "args"
    args.write_text("0\n3\n0\n")
    code = cli(
        "run",
        "-w",
        tmp_path / "wd",
        "-a",
        args,
        "--",
        "bash",
        "-c",
        'echo "bad $1" >&2; exit "$1"',
        "_",
    )
    assert code == 1
    out = capsys.readouterr().err
    lines = plain_lines(out)
    assert lines[1] == ("FAILED", "3", "local")
    assert lines[0][0] == lines[2][0] == "FINISHED"
    # the summary names the failed job, its stderr file and its last line
    assert (
        f"failed: job 1 FAILED rc=3 host=local stderr={tmp_path / 'wd' / '1' / 'job.stderr'}: bad 3"
        in out
    )
    assert "3 jobs: 2 finished, 1 failed, 0 skipped, 0 not run" in out


def test_command_not_found_is_a_job_failure_not_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("run", "-w", tmp_path, "--", "no-such-program-xq") == 1
    err = capsys.readouterr().err
    assert plain_lines(err)[0] == ("FAILED", "127", "local")
    # said as a shell prompt says it: no wrapper path, no line number
    assert (tmp_path / "0" / "job.stderr").read_text() == "no-such-program-xq: command not found\n"
    assert "job.wrapped" not in err and "line " not in err
    assert cli("run", "-w", tmp_path / "w2", "--", "./no-such-script", "x") == 1
    text = (tmp_path / "w2" / "0" / "job.stderr").read_text()
    assert text == "./no-such-script: No such file or directory\n"
    assert cli("run", "-w", tmp_path / "w3", "--", str(tmp_path)) == 1
    assert "Permission denied" in (tmp_path / "w3" / "0" / "job.stderr").read_text()
    assert "rc=126" in capsys.readouterr().err


def test_empty_arg_file_runs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = tmp_path / "args"
    args.write_bytes(b"")
    assert cli("run", "-w", tmp_path / "wd", "-a", args, "--", "echo") == 0
    assert "0 jobs: 0 finished" in capsys.readouterr().err


# ----------------------------------------------------------- usage errors
@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["-j", "0", "--", "true"], "-j/--jobs"),
        (["-j", "many", "--", "true"], "-j/--jobs"),
        (["-a", "/nonexistent/args.txt", "--", "echo"], "-a/--arg-file"),
        (["-f", "/nonexistent/jobs.sh"], "-f/--jobs-file"),
        (["-S", "bad spec!", "--", "true"], "-S/--server"),
        (["-S", "host:99999", "--", "true"], "-S/--server"),
        (["--timeout", "-1", "--", "true"], "--timeout"),
        (["--retries", "x", "--", "true"], "--retries"),
        (["--retries", "2", "--halt", "--", "true"], "--halt"),
        (["-a", "x", "-f", "y", "--", "true"], "-f/--jobs-file"),
        (["--servers-file", "/nonexistent/hosts.toml", "--", "true"], "--servers-file"),
        ([], "no command"),
        (["--", ""], "CMD"),
    ],
)
def test_usage_errors_exit_2_and_name_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], named: str
) -> None:
    assert cli("run", "-w", tmp_path / "wd", *argv) == 2
    err = capsys.readouterr().err
    assert named in err
    assert "Traceback" not in err
    assert not (tmp_path / "wd").exists()  # nothing ran


def test_jobs_file_takes_no_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jobs = tmp_path / "jobs"
    jobs.write_text("true\n")
    assert cli("run", "-w", tmp_path, "-f", jobs, "--", "echo") == 2
    assert "-f/--jobs-file" in capsys.readouterr().err


def test_arg_file_line_with_nul_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = tmp_path / "args"
    args.write_bytes(b"ok\nbad\0byte\n")
    assert cli("run", "-w", tmp_path / "wd", "-a", args, "--", "echo") == 2
    assert "-a/--arg-file line 2" in capsys.readouterr().err


def test_unwritable_workdir_names_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli("run", "-w", blocker / "wd", "--", "true") == 2
    err = capsys.readouterr().err
    assert "-w/--workdir" in err and str(blocker / "wd") in err


def test_yaml_servers_file_without_pyyaml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text("servers:\n  node1: {}\n")
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml -> ImportError
    assert cli("run", "--servers-file", hosts, "--", "true") == 2
    err = capsys.readouterr().err
    assert "--servers-file" in err and "PyYAML" in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("servers = [", "not valid TOML"),
        ("keyfile = 'k'\n", "'servers'"),
        ("forks = 4\n[servers.a]\n", "-j/--jobs"),
        ("[servers]\na = 3\n", "server 'a' must be a table"),
        ("servers = ['ok', 'bad spec']\n", "'bad spec'"),
    ],
)
def test_bad_servers_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    hosts = tmp_path / "hosts.toml"
    hosts.write_text(text)
    assert cli("run", "--servers-file", hosts, "--", "true") == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_servers_file_options_and_forks(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts.toml"
    hosts.write_text(
        'keyfile = "~/.ssh/id_ed25519"\nknown_hosts = "/etc/kh"\n'
        '[servers.node1]\nhost = "10.0.0.5"\nuser = "alice"\nforks = 16\n'
        '[servers."node2.example.com"]\n'
    )
    name, opts, forks, flag = scheduler_options(["bob@node3:2222"], str(hosts))
    assert name == "ssh"
    assert opts["keyfile"] == "~/.ssh/id_ed25519" and opts["known_hosts"] == "/etc/kh"
    assert opts["servers"] == {
        "node1": {"host": "10.0.0.5", "user": "alice", "forks": 16},
        "node2.example.com": {},
        "bob@node3:2222": {"host": "node3", "user": "bob", "port": 2222},
    }
    # servers without forks of their own get 8 slots; the total is the sum
    assert opts["forks_per_server"] == DEFAULT_FORKS_PER_SERVER
    assert forks == 16 + 2 * DEFAULT_FORKS_PER_SERVER
    assert flag == f"--servers-file {hosts}"
    # -j is the total, spread evenly over the servers without their own forks
    _, opts, forks, _ = scheduler_options(["bob@node3:2222"], str(hosts), jobs=5)
    assert (forks, opts["forks_per_server"]) == (5, 2)
    # the file's own forks_per_server wins
    hosts.write_text("forks_per_server = 3\n[servers.a]\n[servers.b]\n")
    _, opts, forks, _ = scheduler_options([], str(hosts))
    assert (forks, opts["forks_per_server"]) == (6, 3)


def test_server_flags_and_defaults() -> None:
    assert scheduler_options(["a", "u@b:23", "[::1]:2200"], None)[:3] == (
        "ssh",
        {
            "servers": ["a", "u@b:23", "[::1]:2200"],
            "forks_per_server": DEFAULT_FORKS_PER_SERVER,
        },
        3 * DEFAULT_FORKS_PER_SERVER,
    )
    assert scheduler_options([], None)[:3] == ("local", {}, os.cpu_count() or 1)
    assert scheduler_options([], None, jobs=3)[2] == 3
    with pytest.raises(UsageError, match="-S/--server"):
        scheduler_options(["a b"], None)


def test_unknown_server_option_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hosts = tmp_path / "hosts.toml"
    hosts.write_text("[servers.node1]\nhots = 'typo'\n")
    assert cli("run", "-w", tmp_path / "wd", "--servers-file", hosts, "--", "true") == 2
    err = capsys.readouterr().err
    assert "--servers-file" in err and "hots" in err
    assert "Traceback" not in err


# ------------------------------------------------------------ substitution
def test_substitute_rules() -> None:
    assert substitute(["cp", "{}", "out/{}.bak"], "a b") == ["cp", "a b", "out/a b.bak"]
    assert substitute(["gzip", "-9"], "f") == ["gzip", "-9", "f"]
    # a line containing {} is not substituted again
    assert substitute(["echo", "{}"], "x{}y") == ["echo", "x{}y"]


def test_awkward_names_arrive_byte_for_byte(tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    args = tmp_path / "args"
    paths = [os.path.join(os.fsencode(files), name) for name in AWKWARD]
    for i, path in enumerate(paths):
        with open(path, "wb") as fh:
            fh.write(b"content %d" % i)
    args.write_bytes(b"\n".join(AWKWARD) + b"\n")
    # {} as a whole argument, and inside a word
    assert cli("run", "-w", tmp_path / "wd", "-j", "4", "-a", args, "--", *ECHO_ARG, "[{}]") == 0
    for i, name in enumerate(AWKWARD):
        assert (tmp_path / "wd" / str(i) / "job.stdout").read_bytes() == b"[" + name + b"]"
    # the line names a real file that the program opens
    args.write_bytes(b"\n".join(paths) + b"\n")
    assert cli("run", "-w", tmp_path / "wd2", "-j", "4", "-a", args, "--", "cat") == 0
    for i in range(len(paths)):
        assert (tmp_path / "wd2" / str(i) / "job.stdout").read_bytes() == b"content %d" % i


def test_empty_line_is_an_empty_argument(tmp_path: Path) -> None:
    args = tmp_path / "args"
    args.write_bytes(b"a\n\nb\n")
    assert cli("run", "-w", tmp_path / "wd", "-a", args, "--", *ECHO_ARG, "<{}>") == 0
    outs = [(tmp_path / "wd" / str(i) / "job.stdout").read_text() for i in range(3)]
    assert outs == ["<a>", "<>", "<b>"]


def test_arg_file_from_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"x y\nz\n")))
    assert cli("run", "-w", tmp_path / "wd", "-a", "-", "--", *ECHO_ARG) == 0
    outs = [(tmp_path / "wd" / str(i) / "job.stdout").read_text() for i in range(2)]
    assert outs == ["x y", "z"]


def test_single_job_argv(tmp_path: Path) -> None:
    assert cli("run", "-w", tmp_path / "wd", "--", *ECHO_ARG, "$(id) `id` 'q'") == 0
    assert (tmp_path / "wd" / "0" / "job.stdout").read_text() == "$(id) `id` 'q'"


def test_jobs_file_lines_are_shell_code(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.sh"
    jobs.write_text(
        "# a comment\n"
        "echo $((6 * 7)) | tr 4 x\n"
        "\n"
        "   # an indented comment\n"
        "for i in 1 2; do printf '%s,' \"$i\"; done\n"
        "   \n"
        'echo "$XQUTE_JOB_INDEX"\n'
    )
    assert cli("run", "-w", tmp_path / "wd", "-f", jobs) == 0
    outs = [(tmp_path / "wd" / str(i) / "job.stdout").read_text() for i in range(3)]
    assert outs == ["x2\n", "1,2,", "2\n"]
    assert not (tmp_path / "wd" / "3").exists()


# ------------------------------------------------- strategies and timeouts
def test_retries_turn_a_flaky_job_into_success(tmp_path: Path) -> None:
    count = tmp_path / "count"
    flaky = f'n=$(cat {count} 2>/dev/null || echo 0); echo $((n+1)) > {count}; [ "$n" -ge 2 ]'
    assert cli("run", "-w", tmp_path / "wd", "--retries", "2", "--", "bash", "-c", flaky) == 0
    assert count.read_text().strip() == "3"


def test_halt_stops_at_the_first_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = tmp_path / "jobs"
    jobs.write_text("exit 5\n" + "true\n" * 5)
    assert cli("run", "-w", tmp_path / "wd", "-j", "1", "--halt", "-f", jobs) == 1
    out = capsys.readouterr().err
    assert plain_lines(out) == {0: ("FAILED", "5", "local")}
    assert "6 jobs: 0 finished, 1 failed, 0 skipped, 5 not run" in out


def test_timeout_kills_the_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("run", "-w", tmp_path / "wd", "--timeout", "0.5", "--", "sleep", "30") == 1
    assert plain_lines(capsys.readouterr().err)[0] == ("FAILED", "124", "local")


# ------------------------------------------------------------------ resume
def test_resume_skips_jobs_that_finished(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = tmp_path / "args"
    args.write_text("a\nbad\nc\n")
    counts = tmp_path / "counts"
    counts.mkdir()
    cmd = [
        "--",
        "bash",
        "-c",
        'echo ran >> "$2/$1"; [ "$1" != bad ]',
        "_",
        "{}",
        str(counts),
    ]
    wd = tmp_path / "wd"
    assert cli("run", "-w", wd, "-a", args, *cmd) == 1
    capsys.readouterr()

    assert cli("run", "-w", wd, "-a", args, "--resume", *cmd) == 1
    out = capsys.readouterr().err
    ran = {p.name: p.read_text().count("ran") for p in counts.iterdir()}
    assert ran == {"a": 1, "bad": 1, "c": 1}  # nothing that ran runs again
    lines = plain_lines(out)
    assert lines[0][0] == lines[2][0] == "SKIPPED"
    assert lines[1][0] == "FAILED"
    assert "3 jobs: 0 finished, 1 failed, 2 skipped, 0 not run" in out

    # with --retries the failed job is retried (its first attempt counts)
    assert cli("run", "-w", wd, "-a", args, "--resume", "--retries", "1", *cmd) == 1
    capsys.readouterr()
    ran = {p.name: p.read_text().count("ran") for p in counts.iterdir()}
    assert ran == {"a": 1, "bad": 2, "c": 1}
    assert cli("run", "-w", wd, "-a", args, "--resume", "--retries", "1", *cmd) == 1
    ran = {p.name: p.read_text().count("ran") for p in counts.iterdir()}
    assert ran == {"a": 1, "bad": 2, "c": 1}  # both attempts used up

    # a changed line is a different command: it runs even though job 1 ...
    args.write_text("a\ngood\nc\n")
    assert cli("run", "-w", wd, "-a", args, "--resume", *cmd) == 0
    ran = {p.name: p.read_text().count("ran") for p in counts.iterdir()}
    assert ran == {"a": 1, "bad": 2, "c": 1, "good": 1}
    # ... and without --resume everything runs again
    capsys.readouterr()
    assert cli("run", "-w", wd, "-a", args, *cmd) == 0
    ran = {p.name: p.read_text().count("ran") for p in counts.iterdir()}
    assert ran == {"a": 2, "bad": 2, "c": 2, "good": 2}
    # the skipped jobs' files still say FINISHED (status shows them as such)
    assert cli("status", "--json", wd) == 0


def test_resume_compares_shell_code_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "marker"
    jobs = tmp_path / "jobs"
    jobs.write_text(f"echo x >> {marker}\n")
    wd = tmp_path / "wd"
    assert cli("run", "-w", wd, "-f", jobs) == 0
    assert cli("run", "-w", wd, "-f", jobs, "--resume") == 0
    assert marker.read_text() == "x\n"
    jobs.write_text(f"echo y >> {marker}\n")
    assert cli("run", "-w", wd, "-f", jobs, "--resume") == 0
    assert marker.read_text() == "x\ny\n"


# ------------------------------------------------------------------ status
def test_status_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wd = tmp_path / "wd"
    jobs = tmp_path / "jobs"
    jobs.write_text("sleep 0.2\nexit 3\n")
    assert cli("run", "-w", wd, "-f", jobs) == 1
    # as a workdir of the Python API (no run file): a job fed, never submitted
    (wd / ".xqute-ssh-run.json").unlink()
    (wd / "7").mkdir()
    capsys.readouterr()
    assert cli("status", wd, "--json") == 0
    records = json.loads(capsys.readouterr().out)
    assert [set(r) for r in records] == [
        {"index", "status", "host", "rc", "duration", "command"}
    ] * 3
    first, second, never = records
    assert first["index"] == 0 and first["status"] == "FINISHED" and first["rc"] == 0
    assert first["host"] == "local" and first["command"] == "sleep 0.2"
    assert 0.15 < first["duration"] < 30
    assert second["status"] == "FAILED" and second["rc"] == 3
    assert never == {
        "index": 7,
        "status": "NOT_STARTED",
        "host": None,
        "rc": None,
        "duration": None,
        "command": None,
    }


def test_status_plain_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wd = tmp_path / "wd"
    assert cli("run", "-w", wd, "--", "echo", "a b") == 0
    capsys.readouterr()
    assert cli("status", wd) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert captured.err == "1 job: 1 finished\n"  # the counts, apart from the TSV
    rows = [line.split("\t") for line in out.splitlines()]
    assert rows[0] == ["index", "status", "host", "rc", "duration", "command"]
    assert rows[1][:4] == ["0", "FINISHED", "local", "0"]
    assert rows[1][5] == "echo 'a b'"
    assert all(len(row) == 6 for row in rows)  # pure TSV on stdout
    assert not ANSI.search(out)


def test_status_shows_this_runs_jobs_not_an_earlier_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wd = tmp_path / "wd"
    assert cli("run", "-w", wd, "echo", ":::", "a", "b", "c", "d") == 0
    assert cli("run", "-w", wd, "echo", ":::", "x") == 0  # the same workdir, fewer jobs
    capsys.readouterr()
    assert cli("status", wd) == 0
    captured = capsys.readouterr()
    rows = [line.split("\t") for line in captured.out.splitlines()]
    assert [r[0] for r in rows[1:]] == ["0"] and rows[1][5] == "echo x"
    assert "1 job: 1 finished" in captured.err
    assert "3 job directories from an earlier, larger run" in captured.err


def test_status_of_a_missing_workdir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("status", tmp_path / "nope") == 2
    assert "WORKDIR" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("jid", "host"),
    [
        ("12345", "local"),
        ("node1:4242:123456", "node1"),
        ("alice@node1:22:4242:99", "alice@node1:22"),
        ("[::1]:2200:1:2", "[::1]:2200"),
        (None, None),
        ("", None),
    ],
)
def test_host_from_jid(jid: str | None, host: str | None) -> None:
    assert host_from_jid(jid) == host


# ------------------------------------------------------------------ output
def test_plain_output_has_one_line_per_job_and_no_ansi(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = tmp_path / "jobs"
    jobs.write_text("true\nexit 2\ntrue\n")
    assert cli("run", "-w", tmp_path / "wd", "-f", jobs) == 1
    captured = capsys.readouterr()
    # stdout carries only the jobs' output (here none); our report is on stderr
    assert captured.out == ""
    assert plain_lines(captured.err) == {
        0: ("FINISHED", "0", "local"),
        1: ("FAILED", "2", "local"),
        2: ("FINISHED", "0", "local"),
    }
    assert not ANSI.search(captured.out + captured.err)


def test_quiet_prints_only_the_summary_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = tmp_path / "jobs"
    jobs.write_text("true\nexit 2\n")
    assert cli("run", "-q", "-w", tmp_path / "wd", "-f", jobs) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [captured.err.splitlines()[0]]
    assert captured.err.startswith("2 jobs: 1 finished, 1 failed, 0 skipped, 0 not run (")
    assert captured.out == ""


def test_tally_bookkeeping() -> None:
    t = Tally(total=5)
    t.started(0, "h1")
    t.started(0, "h1")  # idempotent (submitted, then started)
    t.started(1, "h2")
    t.started(2, "h2")
    assert repr(t) == "<Tally 5 jobs: 3 running, 0 finished, 0 failed, 0 skipped, 2 waiting>"
    t.requeued(2)  # a retry: waiting again
    assert t.hosts["h2"].running == 1
    t.ended_as(0, Outcome.FINISHED, 0, "ignored: ran on h1")
    t.ended_as(1, Outcome.FAILED, 3, "h2")
    assert t.ended_as(1, Outcome.FAILED, 3, "h2") is None  # ends once
    t.ended_as(3, Outcome.SKIPPED, 0, "local")
    assert repr(t) == "<Tally 5 jobs: 0 running, 1 finished, 1 failed, 1 skipped, 2 waiting>"
    assert (t.hosts["h1"].finished, t.hosts["h2"].failed, t.hosts["h2"].running) == (
        1,
        1,
        0,
    )
    assert [(e.index, e.host, e.rc) for e in t.failures] == [(1, "h2", 3)]
    assert "local" not in t.hosts  # skipped jobs ran nowhere


def test_live_view_renders_bar_and_hosts() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    tally = Tally(total=4)
    view = LiveView(console, tally, n_skip=1)
    tally.started(0, "node1")
    tally.started(1, "node2")
    ending = tally.ended_as(1, Outcome.FAILED, 1, "node2")
    assert ending is not None
    view.job_ended(ending)
    console.print(view.render())
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())
    assert "1/3" in text  # skipped jobs are left out of the bar
    assert "0 done" in text and "1 failed" in text and "1 running" in text
    assert re.search(r"node1\s+1\s+0\s+0", text)
    assert re.search(r"node2\s+0\s+0\s+1", text)


def test_demo_without_sshd_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from xqute_ssh.cli import demo

    monkeypatch.setattr(demo, "sshd_path", lambda: None)
    assert cli("demo") == 2
    assert "apt-get install openssh-server" in capsys.readouterr().err


# -------------------------------------------------------------- subprocess
def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    env["TERM"] = "xterm-256color"  # even so: not a terminal, so no colour
    return env


def test_python_m_exit_status_and_no_ansi(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    jobs.write_text("echo fine\necho oops >&2; exit 4\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "xqute_ssh",
            "run",
            "-v",
            "-w",
            str(tmp_path / "wd"),
            "-f",
            str(jobs),
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert plain_lines(proc.stderr) == {
        0: ("FINISHED", "0", "local"),
        1: ("FAILED", "4", "local"),
    }
    assert proc.stdout == "fine\n"  # the jobs' own output, nothing else
    assert "oops" in proc.stderr  # the job's stderr, and the summary's last line
    assert "job 1 failed" in proc.stderr  # -v: the engine's INFO log
    assert not ANSI.search(proc.stdout + proc.stderr)

    usage = subprocess.run(
        [sys.executable, "-m", "xqute_ssh", "run", "-j", "0", "--", "true"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert usage.returncode == 2
    assert "-j/--jobs" in usage.stderr


def test_ctrl_c_exits_130_and_leaves_no_job_running(tmp_path: Path) -> None:
    token = f"{os.getpid()}-{time.monotonic_ns()}"
    marker = f"xqcli-{token}"  # only the job's process has this in its argv
    wd = tmp_path / "wd"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "xqute_ssh",
            "run",
            "-w",
            str(wd),
            "--",
            "bash",
            "-c",
            'exec -a "xqcli-$1" sleep 60',
            "_",
            token,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        status = wd / "0" / "job.status"
        deadline = time.monotonic() + 60  # hang guard only
        while not (status.exists() and status.read_text().strip() == "4" and pids_with(marker)):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert out == ""  # the job printed nothing; our report is on stderr
    assert "interrupted by SIGINT" in err
    assert plain_lines(err)[0][0] == "KILLED"
    assert "Traceback" not in err
    assert pids_with(marker) == []


# ------------------------------------------------------------------ logs
def test_log_records_said_once_and_on_one_line() -> None:
    import logging

    from xqute_ssh.cli.logs import OneLineFormatter, SaidOnce

    once = SaidOnce()
    cause = "root@h:22: host key unknown: not in kh; add it with: ssh-keyscan h >> kh"

    def rec(msg: str, level: int = logging.WARNING) -> logging.LogRecord:
        return logging.LogRecord("xqute_ssh", level, __file__, 1, msg, None, None)

    assert once.filter(rec(cause))
    assert not once.filter(rec(f"job 2: {cause}; trying another host"))
    assert not once.filter(rec(f"job 3: submission failed: {cause}"))
    assert not once.filter(rec(cause))
    assert once.filter(rec("job 4: its processes on h1 outlived the kill"))
    assert once.filter(rec(cause, logging.INFO))  # -v shows everything
    assert once.dropped == 3
    text = OneLineFormatter("%(levelname)s %(message)s").format(rec("two\nlines\n"))
    assert text == "WARNING two | lines"


def test_mistyped_flags_and_commands_get_a_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("run", "--retires", "2", "--", "true") == 2
    err = capsys.readouterr().err
    assert "--retires (did you mean --retries?)" in err and "xqute-ssh run" in err
    assert cli("rnu", "--", "true") == 2
    assert "did you mean 'run'?" in capsys.readouterr().err
    assert cli("status", "--jsn") == 2
    assert "did you mean --json?" in capsys.readouterr().err


def test_forks_is_the_same_flag_as_jobs() -> None:
    """`forks` is the word of the API and of the servers file: a user who
    types --forks gets -j, not "did you mean --workdir?"."""
    parser = build_parser()
    for flag in ("-j", "--jobs", "--forks"):
        ns = parser.parse_args(["run", flag, "3", "--", "true"])
        assert make_plan(ns).forks == 3, flag
