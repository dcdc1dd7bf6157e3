"""The shell snippets the SSH scheduler sends over a host's control session.

Each builder returns POSIX ``sh`` code; every value in it is quoted once with
``shlex.quote`` (paths) or is an integer we produced (pids, start times), so
nothing a user or a job wrote can change what runs.  Parsers turn the replies
into values and never execute anything.

Why these shapes (see ../shared/NOTES.md): a round trip over the open control
``sh`` costs ~1 ms while a new exec channel costs ~85 ms, and ``bash`` started
with SSH_CLIENT in its environment sources ~/.bashrc again (~84 ms).  So jobs
are started from the control shell, which already carries the environment
the user's rc files set, with SSH_CLIENT/SSH2_CLIENT unset.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

_q = shlex.quote

#: Reads /proc/<pid>/stat into $st as "<state> <starttime>" (empty if gone).
#: The command name may hold spaces and parentheses, so cut after the last ")".
_STAT_FN = (
    "xq_stat() { st=; read -r st < /proc/$1/stat 2>/dev/null || return 1; "
    'st=${st##*) }; set -f; set -- $st; set +f; st="$1 ${20}"; }'
)

PROBE = (
    "command -v bash >/dev/null 2>&1 && echo bash=yes || echo bash=no; "
    "command -v setsid >/dev/null 2>&1 && echo setsid=yes || echo setsid=no; "
    # SSH_CLIENT unset: bash would source ~/.bashrc again (see above)
    "( unset SSH_CLIENT SSH2_CLIENT; "
    "bash -c 'echo bashversion=${BASH_VERSINFO[0]}.${BASH_VERSINFO[1]}' "
    "2>/dev/null </dev/null ); "
    "echo home=$HOME"
)


@dataclass(frozen=True)
class ProbeResult:
    has_bash: bool
    has_setsid: bool
    bash_version: tuple[int, int] | None
    home: str

    @classmethod
    def parse(cls, text: str) -> ProbeResult:
        values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        version: tuple[int, int] | None = None
        try:
            major, minor = values.get("bashversion", "").split(".", 1)
            version = (int(major), int(minor))
        except ValueError:
            version = None
        return cls(
            has_bash=values.get("bash") == "yes",
            has_setsid=values.get("setsid") == "yes",
            bash_version=version,
            home=values.get("home", ""),
        )


def launch(script: str, stdout: str, stderr: str, events: str | None = None) -> str:
    """Start ``bash script`` detached; print "<pid> <starttime>" or an error.

    ``events``: the FIFO of the host's end-event relay (events.py), handed
    to the wrapper in its environment (it unsets it before the job runs).

    The job gets its own session and process group (``setsid``; it is not a
    group leader when started with ``&`` from a non-interactive shell, so
    setsid does not fork and ``$!`` is the job's pid), stdin from /dev/null
    and its output in files.  The control session runs every request in a
    subshell of its own (``( eval ... )``, see ssh/control.py) that exits at
    once, so the job is re-parented and the control shell keeps no zombie
    per job; no second subshell here (one process less per job).
    """
    return (
        f"{_STAT_FN}; "
        f"if [ ! -r {_q(script)} ]; then echo 'xq-error noscript'; else "
        "unset SSH_CLIENT SSH2_CLIENT; "
        # BASH_ENV is for the job's bash only (see wrapper.sh).
        'if [ -n "${BASH_ENV+x}" ]; then XQ_BASH_ENV=$BASH_ENV; '
        "export XQ_BASH_ENV; unset BASH_ENV; fi; "
        + (f"XQ_EVENTS={_q(events)} " if events else "")
        + f"setsid bash {_q(script)} </dev/null >{_q(stdout)} 2>{_q(stderr)} & "
        'p=$!; xq_stat "$p" && echo "xq-started $p ${st#* }" '
        '|| echo "xq-started $p 0"; fi'
    )


@dataclass(frozen=True)
class Launched:
    pid: int
    starttime: int


def parse_launch(text: str) -> Launched | str:
    """A Launched, or an error word ("noscript", or the raw reply)."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "xq-started":
            try:
                return Launched(int(parts[1]), int(parts[2]))
            except ValueError:
                break
        if len(parts) == 2 and parts[0] == "xq-error":
            return parts[1]
    return text.strip() or "no reply"


def dead_among(procs: Sequence[tuple[int, int]]) -> str:
    """Print the pid of each (pid, starttime) that no longer runs.

    A pid whose start time differs was reused by another process: the job
    that had it is gone.  A zombie counts as gone.
    """
    items = " ".join(f"{int(p)}:{int(s)}" for p, s in procs)
    return (
        f"{_STAT_FN}; for x in {items}; do p=${{x%:*}}; s=${{x#*:}}; "
        'if xq_stat "$p"; then '
        'case "$st" in "Z "*) echo "$p" ;; *" $s") ;; '
        '*) [ "$s" = 0 ] || echo "$p" ;; esac; '
        'else echo "$p"; fi; done'
    )


def parse_pids(text: str) -> set[int]:
    return {int(w) for w in text.split() if w.isdigit()}


def kill_group(pid: int, starttime: int, grace: float) -> str:
    """TERM the job's process group now; KILL whatever is left after ``grace``.

    The escalation runs detached on the host, so it happens even if the
    controller dies right after asking.  Only a process with the recorded
    start time is signalled (a reused pid belongs to someone else).
    """
    ticks = max(1, int(grace * 10))
    p = int(pid)
    check = (
        f'xq_stat {p} && case "$st" in *" {int(starttime)}") true ;; *) false ;; esac'
        if starttime
        else f"xq_stat {p}"
    )
    return (
        f"{_STAT_FN}; if {check}; then kill -s TERM -- -{p} 2>/dev/null; "
        "( ( i=0; "
        f"while kill -s 0 -- -{p} 2>/dev/null && [ $i -lt {ticks} ]; "
        "do sleep 0.1; i=$((i+1)); done; "
        f"kill -s KILL -- -{p} 2>/dev/null ) </dev/null >/dev/null 2>&1 & ); "
        "echo xq-killing; else echo xq-gone; fi"
    )


def group_alive(pid: int) -> str:
    """Print "alive" while any process of the job's group remains."""
    return f"kill -s 0 -- -{int(pid)} 2>/dev/null && echo alive || echo gone"
