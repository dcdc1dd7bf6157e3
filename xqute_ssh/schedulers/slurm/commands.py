"""Shell snippets the Slurm scheduler sends to the login node, and parsers.

Pure: each builder returns POSIX ``sh`` code in which every value is quoted
once (``shlex.quote``) or is an integer / base64 text we produced; parsers
turn replies into values and execute nothing.

* ``submit_batch``: many jobs in one round trip.  Each job's directory is
  made, its wrapper written (base64), ``sbatch --parsable`` run, and the id
  written next to it *on the login node* (so a controller that dies before
  recording the id finds it again).  After the first transient refusal the
  rest of the batch is skipped (``sbatch`` may take seconds to give up on an
  unreachable slurmctld; no point repeating that for every job).
* A job whose earlier submission had an unknown outcome (a time-out, a lost
  connection) is submitted "carefully": an id file left by that attempt, or
  a Slurm job of the same unique name, is adopted instead of submitting it
  again.
* ``poll``: one ``squeue`` for every active job, then the status file of
  each (squeue first: a job Slurm calls ended has written its file).
"""

from __future__ import annotations

import base64
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

_q = shlex.quote

#: The job's Slurm id, written on the login node by the submission itself.
ID_FILE = "job.slurm_id"
#: The attempt's files, removed before a fresh submission writes new ones.
ATTEMPT_FILES = ("job.pid", "job.stdout", "job.stderr", "job.status", "job.rc", ID_FILE)

#: sbatch/squeue messages that mean "try again later", not "this job is bad".
TRANSIENT = re.compile(
    r"Socket timed out|Resource temporarily unavailable|"
    r"QOSMaxSubmitJob|AssocMaxSubmitJob|MaxSubmitJobs?Limit|"
    r"Unable to contact slurm controller|Slurm backup controller in standby|"
    r"Connection refused|Zero Bytes were transmitted|"
    r"Slurm temporarily unable|Job violates accounting/QOS policy.*MaxSubmit|"
    r"Nodes required for job are DOWN|Transport endpoint",
    re.IGNORECASE,
)

#: Slurm job states after which nothing of the job runs any more.
ENDED = frozenset(
    {
        "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
        "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "REVOKED", "SPECIAL_EXIT",
    }
)
#: Ended states that are Slurm's doing, not the job script's exit.
SLURM_FAILED = ENDED - {"COMPLETED", "FAILED"}


def is_transient(message: str) -> bool:
    return bool(TRANSIENT.search(message))


@dataclass(frozen=True)
class Submission:
    """One job to submit: its index, directory, wrapper text and name."""

    index: int
    job_dir: str
    script: str
    name: str
    careful: bool = False
    #: The wrapper's file name in the job's directory.
    script_name: str = "job.wrapped.slurm"

    def sbatch_args(self) -> str:
        """Name and output files on the command line (quoted for the shell;
        Slurm expands ``%`` in file names, so it is doubled)."""
        d = self.job_dir.replace("%", "%%")
        return " ".join(
            _q(a)
            for a in (
                f"--job-name={self.name}",
                f"--output={d}/job.stdout",
                f"--error={d}/job.stderr",
            )
        )


def submit_batch(subs: Sequence[Submission], sbatch: str, squeue: str) -> str:
    """One snippet submitting every job; see :func:`parse_submit`.

    Reply lines: ``xq-sub <index> <id>``, ``xq-err <index> <base64 message>``
    (the job cannot be submitted), ``xq-again <index> <base64 message>``
    (transient), ``xq-skip <index>`` (not tried after a transient error).
    """
    # A job whose environment says "started by sshd" would make bash read
    # ~/.bashrc again (see NOTES: ~84 ms, and noise in job.stderr).
    parts = ["xq_stop=; umask 077; unset SSH_CLIENT SSH2_CLIENT"]
    for s in subs:
        d = s.job_dir
        script = f"{d}/{s.script_name}"
        id_file = _q(f"{d}/{ID_FILE}")
        payload = base64.b64encode(s.script.encode("utf-8", "surrogateescape")).decode()
        fresh = " ".join(_q(f"{d}/{f}") for f in ATTEMPT_FILES)
        idx = int(s.index)
        submit = (
            f"if o=$({_q(sbatch)} --parsable {s.sbatch_args()} {_q(script)} 2>&1); then "
            f'o=${{o%%;*}}; printf "%s\\n" "$o" > {id_file}; echo "xq-sub {idx} $o"; '
            f'else m=$(printf "%s" "$o" | base64 | tr -d "\\n"); '
            f'if printf "%s" "$o" | grep -Eqi {_q(TRANSIENT.pattern)}; then '
            f'xq_stop=1; echo "xq-again {idx} $m"; else echo "xq-err {idx} $m"; fi; fi'
        )
        write = (
            f"mkdir -p -- {_q(d)} && printf '%s' {payload} | base64 -d > {_q(script)}"
            f" && echo 3 > {_q(d + '/job.status')}"
        )
        if s.careful:
            # Adopt what an earlier, uncertain attempt left behind.
            found = (
                f"i=; read -r i < {id_file} 2>/dev/null; "
                f'if [ -z "$i" ]; then '
                f"if q=$({_q(squeue)} -h -t all -n {_q(s.name)} -o %i 2>&1); then "
                'i=${q%%[!0-9]*}; else '
                f'xq_stop=1; m=$(printf "%s" "$q" | base64 | tr -d "\\n"); '
                f'echo "xq-again {idx} $m"; continue; fi; fi; '
                f'if [ -n "$i" ]; then printf "%s\\n" "$i" > {id_file}; '
                f'echo "xq-sub {idx} $i"; continue; fi; '
            )
        else:
            found = f"rm -f -- {fresh}; "
        parts.append(
            f"for _ in 1; do if [ -n \"$xq_stop\" ]; then echo 'xq-skip {idx}'; continue; fi; "
            f"{found}"
            f"if {write}; then {submit}; else "
            f'echo "xq-err {idx} $(echo cannot write the job script in {_q(d)} '
            '| base64 | tr -d "\\n")"; '
            "fi; done"
        )
    return "; ".join(parts)


@dataclass(frozen=True)
class SubmitReply:
    """What happened to one job of a batch."""

    kind: str  # "sub", "err", "again", "skip"
    value: str = ""  # the Slurm id, or the message


def parse_submit(text: str) -> dict[int, SubmitReply]:
    out: dict[int, SubmitReply] = {}
    for line in text.splitlines():
        fields = line.split(" ", 2)
        if len(fields) < 2 or not fields[0].startswith("xq-") or not fields[1].isdigit():
            continue
        kind = fields[0][3:]
        value = fields[2].strip() if len(fields) > 2 else ""
        if kind in ("err", "again"):
            value = base64.b64decode(value.encode() or b"").decode(errors="replace").strip()
        elif kind == "sub" and not value.isdigit():
            # sbatch said something that is not an id: treat as an error.
            kind, value = "err", f"sbatch replied {value!r} instead of a job id"
        if kind in ("sub", "err", "again", "skip"):
            out[int(fields[1])] = SubmitReply(kind, value)
    return out


# ------------------------------------------------------------------ poll
@dataclass(frozen=True)
class SlurmState:
    """A job as squeue lists it: state and reason."""

    state: str
    reason: str

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    @property
    def slurm_failed(self) -> bool:
        """Ended by Slurm (time limit, cancelled, node failure...), not by the script."""
        return self.state in SLURM_FAILED


_SQ_MARK = "xq-squeue"
_SQ_END = "xq-squeue-end"


def squeue(ids: Sequence[str], squeue_cmd: str) -> str:
    """Print ``xq-squeue <rc>`` then ``id|STATE|reason`` per listed job.

    Ids unknown to Slurm (purged after MinJobAge) are simply not listed; when
    *all* are unknown squeue fails with "Invalid job id", which counts as an
    empty list.
    """
    joined = ",".join(str(int(i)) for i in ids)
    return (
        f"q=$({_q(squeue_cmd)} -h -t all -j {joined} -o '%i|%T|%r' 2>&1); r=$?; "
        'case "$q" in *"Invalid job id"*) r=0; q= ;; esac; '
        f'echo "{_SQ_MARK} $r"; printf "%s\\n{_SQ_END}\\n" "$q"'
    )


def parse_squeue(text: str) -> tuple[dict[str, SlurmState] | None, str]:
    """States by id, or None when squeue failed (slurmctld unreachable); and
    the rest of the reply (whatever followed the squeue part)."""
    _, sep, rest = text.partition(f"{_SQ_MARK} ")
    body, sep2, remaining = rest.partition(f"\n{_SQ_END}\n")
    if not sep or not sep2:
        return None, text
    rc_text, _, listing = body.partition("\n")
    if rc_text.strip() != "0":
        return None, remaining
    states: dict[str, SlurmState] = {}
    for line in listing.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[0].isdigit():
            states[parts[0]] = SlurmState(parts[1].strip(), parts[2].strip())
    return states, remaining


def scancel(job_id: str, scancel_cmd: str) -> str:
    """TERM a running job (batch shell and steps); cancel it if still pending.

    Signalling a pending job makes scancel wait, so the two states are asked
    for separately.  The wrapper's TERM handler stops the command and records
    the end; :func:`scancel_hard` follows after the grace period.
    """
    j = str(int(job_id))
    c = _q(scancel_cmd)
    return (
        f"{c} --state=PENDING {j} 2>/dev/null; "
        f"{c} -s TERM --full --state=RUNNING {j} 2>/dev/null; :"
    )


def scancel_hard(job_id: str, scancel_cmd: str) -> str:
    """Cancel the job outright (Slurm sends KILL after its KillWait)."""
    c, j = _q(scancel_cmd), int(job_id)
    return f"{c} -s KILL --full {j} 2>/dev/null; {c} {j} 2>/dev/null; :"
