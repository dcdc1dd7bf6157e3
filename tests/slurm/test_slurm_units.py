"""The slurm scheduler's pure parts: options, snippets' replies, configuration.

No cluster needed; these run everywhere.
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from xqute_ssh.cli.args import UsageError, build_parser, make_plan
from xqute_ssh.errors import ConfigError
from xqute_ssh.schedulers import get_scheduler
from xqute_ssh.schedulers.slurm import SlurmScheduler, commands, options


def test_options_become_sbatch_directives_as_in_xqute() -> None:
    opts = options.normalize(
        {"partition": "short", "cpus_per_task": 2, "c": 4, "exclusive": True, "qos": None},
        "here",
    )
    assert options.directives(opts, ["--constraint=avx2"]) == [
        "#SBATCH --partition=short",
        "#SBATCH --cpus-per-task=2",
        "#SBATCH -c 4",
        "#SBATCH --exclusive",
        "#SBATCH --constraint=avx2",
    ]


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        ({"output": "x"}, "set by the slurm scheduler"),
        ({"job_name": "x"}, "set by the slurm scheduler"),
        ({"mem": "1G\n#SBATCH --account=other"}, "one line"),
        ({"bad key": 1}, "not an sbatch option name"),
        ({"gres": ["gpu:1"]}, "single value"),
    ],
)
def test_bad_options_are_refused_with_the_reason(opts: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        options.normalize(opts, "slurm scheduler options")


def test_extra_lines_must_be_options() -> None:
    assert options.extra_lines("#SBATCH --constraint=x", "e") == ["--constraint=x"]
    with pytest.raises(ConfigError, match="not an sbatch option"):
        options.extra_lines(["hostname"], "sbatch_extra")


def test_scheduler_configuration_errors(tmp_path: Path) -> None:
    assert get_scheduler("slurm") is SlurmScheduler
    with pytest.raises(ConfigError, match="login node"):
        SlurmScheduler(workdir=tmp_path)
    with pytest.raises(ConfigError, match="set by the slurm scheduler"):
        SlurmScheduler(workdir=tmp_path, login="u@h", error="x")
    sched = SlurmScheduler(workdir=tmp_path, login="alice@cluster:2222", partition="short", forks=3)
    assert sched.sbatch_options == {"partition": "short"}
    assert sched.forks == 3
    assert "alice@cluster:2222" in repr(sched)


def test_parse_submit_reply() -> None:
    msg = base64.b64encode(b"sbatch: error: invalid partition").decode()
    again = base64.b64encode(b"Socket timed out on send/recv operation").decode()
    replies = commands.parse_submit(
        f"noise\nxq-sub 0 123\nxq-err 1 {msg}\nxq-again 2 {again}\nxq-skip 3\nxq-sub 4 oops\n"
    )
    assert replies[0] == commands.SubmitReply("sub", "123")
    assert replies[1] == commands.SubmitReply("err", "sbatch: error: invalid partition")
    assert replies[2].kind == "again" and commands.is_transient(replies[2].value)
    assert replies[3].kind == "skip"
    assert replies[4].kind == "err"


def test_transient_errors_are_recognised() -> None:
    for text in (
        "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation",
        "sbatch: error: Batch job submission failed: Resource temporarily unavailable",
        "sbatch: error: QOSMaxSubmitJobPerUserLimit",
        "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)",
    ):
        assert commands.is_transient(text), text
    assert not commands.is_transient("sbatch: error: invalid partition specified: nope")


def test_squeue_reply_parsing() -> None:
    states, rest = commands.parse_squeue(
        "xq-squeue 0\n12|RUNNING|None\n13|TIMEOUT|TimeLimit\n\nxq-squeue-end\n0 4\n1 7\n"
    )
    assert states == {
        "12": commands.SlurmState("RUNNING", "None"),
        "13": commands.SlurmState("TIMEOUT", "TimeLimit"),
    }
    assert states["13"].ended and states["13"].slurm_failed
    assert not states["12"].ended
    assert rest == "0 4\n1 7\n"
    failed, rest = commands.parse_squeue("xq-squeue 1\nUnable to contact\nxq-squeue-end\n0 4\n")
    assert failed is None and rest == "0 4\n"


def test_submit_snippet_quotes_every_value(tmp_path: Path) -> None:
    """A job directory and name with shell syntax reach sbatch as plain words."""
    weird = tmp_path / "d $(touch pwned) 'q'"
    sbatch = tmp_path / "sbatch"
    sbatch.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$(dirname "$0")/args"; echo 7\n')
    sbatch.chmod(0o755)
    sub = commands.Submission(0, str(weird), "#!/bin/bash\ntrue\n", "n;$(touch pwned2)")
    out = subprocess.run(
        ["sh", "-c", commands.submit_batch([sub], str(sbatch), "squeue")],
        capture_output=True, text=True, cwd=tmp_path, check=True,
    ).stdout
    assert commands.parse_submit(out)[0] == commands.SubmitReply("sub", "7")
    args = (tmp_path / "args").read_text().splitlines()
    assert args[1] == "--job-name=n;$(touch pwned2)"
    assert args[-1] == f"{weird}/job.wrapped.slurm"
    assert (weird / "job.slurm_id").read_text() == "7\n"
    assert not list(tmp_path.glob("pwned*"))


def test_cli_slurm_flag_builds_the_plan() -> None:
    ns = build_parser().parse_args(
        ["run", "--slurm", "alice@cluster", "--sbatch", "partition=short", "--", "echo", "hi"]
    )
    plan = make_plan(ns)
    assert plan.scheduler == "slurm"
    assert plan.scheduler_opts == {"login": "alice@cluster", "partition": "short"}
    ns = build_parser().parse_args(["run", "--slurm", "a@b", "-S", "c@d", "--", "true"])
    with pytest.raises(UsageError, match="--slurm"):
        make_plan(ns)
