"""Parse and check the command line, and turn it into a :class:`RunPlan`.

argparse checks the syntax; the functions here check what it cannot (files
that must be readable, server specs, a servers file, each job's command), so
``run.py`` never sees raw user input.  Every problem found here is a
:class:`UsageError` whose message names the flag: exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, closest
from ..job import normalize_cmd
from . import gnu

#: Job slots per SSH server when neither -j nor the server's ``forks`` says.
DEFAULT_FORKS_PER_SERVER = 8
DEFAULT_WORKDIR = "./.xqute"
PLACEHOLDER = "{}"

#: Xqute parameters that have a flag of their own; a servers file may not set
#: them at top level (the value would clash with the flag's).
_FLAG_OWNED = {
    "forks": "-j/--jobs/--forks (per-server forks go under [servers.NAME])",
    "workdir": "-w/--workdir",
    "error_strategy": "--retries/--halt",
    "num_retries": "--retries",
    "submission_batch": None,
    "jobname_prefix": None,
}

_SERVER_RE = re.compile(
    r"""^(?:(?P<user>[^@\s:/\[\]]+)@)?        # optional user@
        (?:\[(?P<host6>[0-9A-Fa-f:.%]+)\]     # [ipv6]
          |(?P<host>[A-Za-z0-9_.\-]+))        # name or ipv4
        (?::(?P<port>[0-9]+))?$               # optional :port
    """,
    re.VERBOSE,
)

RUN_EPILOG = """\
Each job's command is an argv: every CMD/ARGS word is one argument, passed to
the program byte for byte (no shell involved).  Input comes after ::: (values)
or :::: (files, one value a line; -a FILE is the same); several sources run
every combination.  GNU parallel's replacement strings work in any word:
{} {.} {/} {//} {/.} {#} {%} and {1} {2} ... for the sources; with none, the
values are appended.  For shell code, say so:   -- bash -c 'wc -c "$1"' _ {}
With -f, each line of JOBSFILE is shell code run by bash.

The jobs' output is printed on stdout as each job ends (-k: in input order);
off a terminal our own report goes to stderr.

examples:
  xqute-ssh run gzip -9 ::: *.txt
  xqute-ssh run -k --tag echo {1}-{2} ::: a b ::: 1 2
  xqute-ssh run -a files.txt -- gzip -9 {}
  xqute-ssh run -S 8/alice@node1 -S node2:2222 --wd . -a ids.txt -- ./train.sh --seed {}
  xqute-ssh run --servers-file hosts.toml -f jobs.sh --retries 2 --joblog log.tsv
  xqute-ssh status ./.xqute
"""


class UsageError(Exception):
    """Bad command-line input; the message names the flag (exit status 2)."""


@dataclass(frozen=True)
class RunPlan:
    """Everything ``run`` needs, checked: one command per job, in index order."""

    commands: list[str | list[str]]
    scheduler: str = "local"
    scheduler_opts: dict[str, Any] = field(default_factory=dict)
    forks: int = 1
    workdir: str = DEFAULT_WORKDIR
    error_strategy: str = "ignore"
    num_retries: int = 0
    resume: bool = False
    #: what the scheduler options came from, to name it in errors
    servers_flag: str | None = None
    #: each job's input values joined by spaces (--tag); empty: no inputs
    tags: list[str] = field(default_factory=list)
    #: how job output is printed (GNU parallel's flags)
    tag: bool = False
    keep_order: bool = False
    ungroup: bool = False
    joblog: str | None = None

    @property
    def workdir_path(self) -> Path:
        return Path(self.workdir).expanduser()


# ---------------------------------------------------------------- argparse
def _whole(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a whole number >= {minimum}, got {text!r}"
            ) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


_forks = _whole(1)
_retries = _whole(0)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected seconds (a number >= 0), got {text!r}"
        ) from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(
            f"must be a finite number >= 0 (0: no timeout), got {text!r}"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``xqute-ssh`` parser with its ``run``, ``status`` and ``demo`` commands."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="xqute-ssh",
        description="Run batches of shell jobs on SSH hosts or on this machine.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        usage="xqute-ssh run [options] [-a ARGFILE | -f JOBSFILE] [--] [CMD [ARGS...]] "
        "[::: VALUES... | :::: FILES...]...",
        help="run a batch of jobs",
        description="Run one job per line of ARGFILE or JOBSFILE, or one job.",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = run.add_argument_group("where jobs run")
    where.add_argument(
        "-S",
        "--server",
        action="append",
        default=[],
        metavar="SERVER",
        help="an SSH host as [N/][user@]host[:port] (N: job slots there, as in GNU "
        "parallel); repeat, or separate with commas, for more hosts (no server: this machine)",
    )
    where.add_argument(
        "--servers-file",
        metavar="FILE",
        help="TOML (or YAML, with PyYAML) file with a [servers] table and "
        "scheduler defaults such as keyfile and known_hosts",
    )
    where.add_argument(
        "--slurm",
        metavar="LOGIN",
        help="submit every job to Slurm with sbatch on this login node "
        "([user@]host[:port]), over SSH",
    )
    where.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an sbatch option for --slurm, e.g. partition=short or time=1:00:00 (repeatable)",
    )
    where.add_argument(
        "-j",
        "--jobs",
        "--forks",  # the API's and the servers file's word for it
        type=_forks,
        metavar="FORKS",
        help="jobs running at once, over all hosts, spread evenly over "
        "servers without forks of their own (default: the number of CPUs "
        f"here; with servers {DEFAULT_FORKS_PER_SERVER} per server)",
    )
    where.add_argument(
        "--wd",
        metavar="DIR",
        help="the directory jobs run in (GNU parallel's name).  Default: this "
        "directory for local jobs, the login's home on SSH hosts (as ssh and GNU "
        "parallel do).  '--wd .' runs them in this directory, at the same path "
        "on every host; a relative DIR is made absolute here first",
    )
    where.add_argument(
        "-w",
        "--workdir",
        default=DEFAULT_WORKDIR,
        help=f"where each job's files are kept (default: {DEFAULT_WORKDIR})",
    )
    what = run.add_argument_group("what to run")
    source = what.add_mutually_exclusive_group()
    source.add_argument(
        "-a",
        "--arg-file",
        metavar="ARGFILE",
        help="one job per line: {} in CMD/ARGS becomes the line ('-': stdin)",
    )
    source.add_argument(
        "-f",
        "--jobs-file",
        metavar="JOBSFILE",
        help="one job per line, each line shell code; blank lines and "
        "# comments are skipped ('-': stdin)",
    )
    how = run.add_argument_group("failures and time")
    strategy = how.add_mutually_exclusive_group()
    strategy.add_argument(
        "--retries",
        type=_retries,
        metavar="N",
        help="retry a failed job up to N times",
    )
    strategy.add_argument(
        "--halt",
        action="store_true",
        help="stop at the first failure: submit nothing more, kill what runs",
    )
    how.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help="kill a job after this long; it ends FAILED with rc 124",
    )
    how.add_argument(
        "--kill-grace",
        type=_seconds,
        metavar="SECONDS",
        help="when a job is killed (Ctrl-C, --halt, --timeout): seconds between "
        "TERM and KILL (default 5)",
    )
    how.add_argument(
        "--resume",
        action="store_true",
        help="do not run again jobs whose files in the workdir show the same "
        "command already ran (finished: SKIPPED; failed: FAILED, retried with "
        "--retries); jobs still running are re-attached",
    )
    show = run.add_argument_group("output")
    show.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="report only errors and the final summary line (the jobs' output is still printed)",
    )
    show.add_argument("-v", "--verbose", action="store_true", help="log what the engine does")
    show.add_argument(
        "--tag",
        action="store_true",
        help="prefix each line of a job's output with its input values and a tab",
    )
    show.add_argument(
        "-k",
        "--keep-order",
        action="store_true",
        help="print the jobs' output in input order, not as they end",
    )
    show.add_argument(
        "-u",
        "--ungroup",
        action="store_true",
        help="print output as it comes, lines of different jobs mixed "
        "(default: each job's output whole, once it ends)",
    )
    show.add_argument(
        "--joblog",
        metavar="FILE",
        help="write one line per ended job to FILE in GNU parallel's format",
    )
    run.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="-- CMD [ARGS...]",
        help="the command (after --)",
    )

    status = sub.add_parser(
        "status",
        help="show the jobs in a workdir",
        description="A table of the jobs in WORKDIR: index, status, host, rc, "
        "duration and command.",
    )
    status.add_argument(
        "workdir",
        nargs="?",
        default=DEFAULT_WORKDIR,
        metavar="WORKDIR",
        help=f"the workdir of a run (default: {DEFAULT_WORKDIR})",
    )
    status.add_argument("--json", action="store_true", help="print a JSON list instead")

    demo = sub.add_parser(
        "demo",
        help="run a small batch over two throwaway loopback sshd hosts",
        description="Start two loopback sshd hosts (needs openssh-server) and "
        "run a small batch of jobs over them with the live display.",
    )
    demo.add_argument("-v", "--verbose", action="store_true", help="log what the engine does")
    return parser


# ------------------------------------------------------- did you mean ...?
def subcommand_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of subcommand ``name``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise KeyError(name)  # pragma: no cover


def suggest_command(parser: argparse.ArgumentParser, args: Sequence[str]) -> str | None:
    """An error with a suggestion for a mistyped subcommand (``rnu``), else None."""
    if not args or args[0].startswith("-"):
        return None
    names = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    choices = list(names[0].choices) if names else []
    if args[0] in choices:
        return None
    guess = closest(args[0], choices)
    hint = f"; did you mean {guess!r}?" if guess else ""
    return f"unknown command {args[0]!r} (choose from {', '.join(choices)}){hint}"


def unknown_options_message(sub: argparse.ArgumentParser, extra: Sequence[str]) -> str:
    """``unrecognized argument --retires; did you mean --retries?``"""
    options = [s for a in sub._actions for s in a.option_strings if s.startswith("--")]
    parts = []
    for word in extra:
        flag = word.split("=", 1)[0]
        guess = closest(flag, options) if flag.startswith("--") else None
        parts.append(f"{word} (did you mean {guess}?)" if guess else word)
    noun = "argument" if len(extra) == 1 else "arguments"
    return f"unrecognized {noun}: {', '.join(parts)}"


# ------------------------------------------------------------- job sources
def read_lines(path: str, flag: str) -> list[str]:
    """The lines of a file, split on newline only, decoded losslessly.

    Bytes that are not UTF-8 survive as surrogate escapes, which the engine
    turns back into the same bytes, so any file name can be a job argument.
    """
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"{flag}: cannot read {path!r}: {exc.strerror or exc}") from None
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the newline that ends the last line starts no new one
    return [line.decode("utf-8", "surrogateescape") for line in lines]


def substitute(template: Sequence[str], arg: str, seq: int = 1) -> list[str]:
    """The argv for one ARGFILE line: replacement strings filled, else appended."""
    return gnu.expand(template, [arg], seq)


def _checked(cmd: str | list[str], where: str) -> str | list[str]:
    try:
        return normalize_cmd(cmd)
    except ConfigError as exc:
        raise UsageError(f"{where}: {exc}") from None


def build_commands(
    command: Sequence[str], arg_file: str | None, jobs_file: str | None
) -> list[str | list[str]]:
    """One command per job: argv lists (CMD, -a, :::) or shell code strings (-f)."""
    return build_jobs(command, arg_file, jobs_file)[0]


def _sources(
    arg_file: str | None, groups: list[tuple[str, list[str]]]
) -> list[list[str]]:
    sources: list[list[str]] = []
    if arg_file is not None:
        sources.append(read_lines(arg_file, "-a/--arg-file"))
    for sep, words in groups:
        if not words:
            what = "value" if sep == gnu.ARGS_SEP else "file"
            raise UsageError(f"{sep}: give at least one {what} after it")
        if sep == gnu.ARGS_SEP:
            sources.append(list(words))
        else:
            sources.extend(read_lines(path, f"{gnu.FILES_SEP} {path}") for path in words)
    return sources


def build_jobs(
    command: Sequence[str], arg_file: str | None, jobs_file: str | None
) -> tuple[list[str | list[str]], list[str]]:
    """One command per job, and each job's input values joined (for --tag).

    Input sources are ``-a FILE``, ``::: values`` and ``:::: FILES``; with
    several, every combination runs (see :mod:`.gnu`).  Without CMD, each
    combination is shell code (GNU parallel's ``parallel ::: 'cmd 1' 'cmd 2'``).
    """
    template, groups = gnu.split_sources(command)
    if jobs_file is not None:
        if template or groups:
            raise UsageError(
                "-f/--jobs-file: each line of JOBSFILE is a whole job; "
                f"give no CMD or ::: after -- (got {' '.join(command)!r})"
            )
        jobs: list[str | list[str]] = []
        for n, line in enumerate(read_lines(jobs_file, "-f/--jobs-file"), 1):
            if line.strip() and not line.lstrip().startswith("#"):
                jobs.append(_checked(line, f"-f/--jobs-file line {n}"))
        return jobs, []
    sources = _sources(arg_file, groups)
    if not template and not sources:
        raise UsageError(
            "no command: give one after --, e.g. `xqute-ssh run -- echo hi`, "
            "input after ::: (`xqute-ssh run echo ::: a b`), or a jobs file with -f"
        )
    if not sources:
        return [_checked(list(template), "CMD")], []
    try:
        gnu.check_template(template, len(sources))
    except gnu.SourceError as exc:
        raise UsageError(f"CMD: {exc}") from None
    commands: list[str | list[str]] = []
    tags: list[str] = []
    where = "-a/--arg-file line" if arg_file is not None and len(sources) == 1 else "job"
    for seq, values in enumerate(gnu.combinations(sources), 1):
        if template:
            cmd: str | list[str] = gnu.expand(template, values, seq)
        else:
            cmd = " ".join(values)  # the values are the commands (shell code)
        commands.append(_checked(cmd, f"{where} {seq}"))
        tags.append(" ".join(values))
    return commands, tags


# ----------------------------------------------------------------- servers
def parse_server_spec(spec: str) -> dict[str, Any]:
    """``[user@]host[:port]`` as scheduler options (host, and user/port if given)."""
    match = _SERVER_RE.match(spec)
    if match is None:
        raise UsageError(
            f"-S/--server {spec!r}: expected [user@]host[:port], e.g. alice@node1:2222"
        )
    out: dict[str, Any] = {"host": match["host6"] or match["host"]}
    if match["user"]:
        out["user"] = match["user"]
    if match["port"] is not None:
        port = int(match["port"])
        if not 1 <= port <= 65535:
            raise UsageError(f"-S/--server {spec!r}: port {port} is outside 1..65535")
        out["port"] = port
    return out


_SLOTS_RE = re.compile(r"^(\d+)/(.+)$")


def split_server_flags(values: Sequence[str]) -> list[tuple[str, int | None]]:
    """``-S`` values as (spec, slots): GNU parallel's ``8/host`` and ``a,b`` lists."""
    out: list[tuple[str, int | None]] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            m = _SLOTS_RE.match(part)
            if m is None:
                out.append((part, None))
                continue
            slots = int(m[1])
            if slots < 1:
                raise UsageError(f"-S/--server {part!r}: the job slots before / must be >= 1")
            out.append((m[2], slots))
    return out


def load_servers_file(path: str) -> dict[str, Any]:
    """A servers file as scheduler options: ``servers`` plus defaults.

    TOML always (tomllib); YAML when the name ends in .yaml/.yml and PyYAML
    is importable; we add no dependency for it.
    """
    flag = f"--servers-file {path}"
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"{flag}: cannot read it: {exc.strerror or exc}") from None
    data: Any
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise UsageError(
                f"{flag}: reading YAML needs PyYAML (pip install pyyaml); or write the file as TOML"
            ) from None
        try:
            data = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise UsageError(f"{flag}: not valid YAML: {exc}") from None
    else:
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"{flag}: not valid TOML: {exc}") from None
    if not isinstance(data, Mapping):
        raise UsageError(f"{flag}: expected a table with a 'servers' entry")
    opts = dict(data)
    for key, instead in _FLAG_OWNED.items():
        if key in opts:
            hint = f"; use {instead}" if instead else ""
            raise UsageError(f"{flag}: {key!r} cannot be set in a servers file{hint}")
    servers = opts.get("servers")
    if isinstance(servers, Mapping) and servers:
        for name, entry in servers.items():
            if entry is not None and not isinstance(entry, Mapping):
                raise UsageError(
                    f"{flag}: server {name!r} must be a table of options, not {entry!r}"
                )
        opts["servers"] = {str(k): dict(v or {}) for k, v in servers.items()}
    elif isinstance(servers, list) and servers:
        for spec in servers:
            if not isinstance(spec, str):
                raise UsageError(
                    f"{flag}: a 'servers' list holds [user@]host[:port] strings, not {spec!r}"
                )
            parse_server_spec(spec)
    else:
        raise UsageError(
            f"{flag}: needs a non-empty 'servers' table (name = {{options}}) "
            "or list of [user@]host[:port]"
        )
    return opts


def _valid_forks(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _capacity(servers: list[str] | dict[str, dict[str, Any]], per_server: Any) -> int:
    """Job slots over all servers: each server's ``forks``, else ``per_server``."""
    default = per_server if _valid_forks(per_server) else DEFAULT_FORKS_PER_SERVER
    if isinstance(servers, list):
        return default * len(servers)
    return sum(e["forks"] if _valid_forks(e.get("forks")) else default for e in servers.values())


def scheduler_options(
    server_specs: Sequence[str], servers_file: str | None, jobs: int | None = None
) -> tuple[str, dict[str, Any], int, str | None]:
    """The scheduler name, its options, forks, and the flag the options came from.

    ``-j`` is the total over all hosts.  A server without its own ``forks``
    gets ``forks_per_server`` slots: the file's value, else ``-j`` spread
    evenly, else 8; without ``-j`` the total is what the servers hold.  (The
    ssh scheduler would otherwise give such a server all ``-j`` slots, and
    placement by most free slots would pile the jobs onto it.)
    """
    if not server_specs and servers_file is None:
        return "local", {}, jobs or os.cpu_count() or 1, None
    with_slots = split_server_flags(server_specs)
    server_specs = [spec for spec, _ in with_slots]
    parsed = {spec: parse_server_spec(spec) for spec in server_specs}
    for spec, slots in with_slots:
        if slots is not None:
            parsed[spec]["forks"] = slots  # -S 8/host: 8 job slots there
    any_slots = any(slots is not None for _, slots in with_slots)
    if servers_file is None:
        servers: list[str] | dict[str, dict[str, Any]] = (
            dict(parsed) if any_slots else list(server_specs)
        )
        opts: dict[str, Any] = {"servers": servers}
        flag = "-S/--server"
    else:
        opts = load_servers_file(servers_file)
        servers = opts["servers"]
        if isinstance(servers, list) and not any_slots:
            servers = [*servers, *server_specs]
        elif isinstance(servers, list):
            servers = {**{s: parse_server_spec(s) for s in servers}, **parsed}
        else:
            # -S hosts join the file's and get its defaults (keyfile, ...).
            servers = {**servers, **parsed}
        opts["servers"] = servers
        flag = f"--servers-file {servers_file}"
    if "forks_per_server" not in opts:
        spread = -(-jobs // len(servers)) if jobs else DEFAULT_FORKS_PER_SERVER
        opts["forks_per_server"] = spread
    forks = jobs or _capacity(servers, opts["forks_per_server"])
    return "ssh", opts, forks, flag


def make_plan(ns: argparse.Namespace) -> RunPlan:
    """Check the parsed ``run`` arguments and turn them into a RunPlan."""
    command = list(ns.command)
    if command and command[0] == "--":
        command = command[1:]
    if ns.slurm:
        from .slurm import slurm_options

        scheduler, opts, forks, flag = slurm_options(
            ns.slurm, ns.sbatch, ns.server, ns.servers_file, ns.jobs
        )
    else:
        scheduler, opts, forks, flag = scheduler_options(ns.server, ns.servers_file, ns.jobs)
    commands, tags = build_jobs(command, ns.arg_file, ns.jobs_file)
    if ns.ungroup and ns.keep_order:
        raise UsageError("-u/--ungroup prints output as it comes: it cannot keep the order (-k)")
    if ns.timeout is not None:
        opts["timeout"] = ns.timeout
    if ns.kill_grace is not None:
        opts["kill_grace"] = ns.kill_grace
    if ns.wd is not None:
        if not ns.wd:
            raise UsageError("--wd: give a directory, e.g. --wd . for this one")
        opts["cwd"] = os.path.abspath(os.path.expanduser(ns.wd))
    if not ns.workdir:
        raise UsageError("-w/--workdir: give a directory")
    if ns.halt:
        strategy, retries = "halt", 0
    elif ns.retries is not None:
        strategy, retries = "retry", ns.retries
    else:
        strategy, retries = "ignore", 0
    return RunPlan(
        commands=commands,
        scheduler=scheduler,
        scheduler_opts=opts,
        forks=forks,
        workdir=ns.workdir,
        error_strategy=strategy,
        num_retries=retries,
        resume=ns.resume,
        servers_flag=flag,
        tags=tags,
        tag=ns.tag,
        keep_order=ns.keep_order,
        ungroup=ns.ungroup,
        joblog=ns.joblog,
    )
