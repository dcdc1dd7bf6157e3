"""Read what a workdir says about its jobs, without an engine running.

``status`` shows it and ``--resume`` decides from it.  Only the job files are
read (job.status, job.rc, job.jid, job.cmd), each metadir independently, so a
pool of threads reads a 10,000-job workdir on a network filesystem quickly.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..status import KILLED_RC, JobStatus

_T = TypeVar("_T")
_R = TypeVar("_R")
_THREADS = 16


@dataclass(frozen=True)
class JobRecord:
    """One job as its metadir shows it (the keys of ``status --json``)."""

    index: int
    #: a JobStatus name; "QUEUED" when there is no job.status yet (fed, never
    #: submitted), "UNKNOWN" when it cannot be parsed
    status: str
    #: "local", an SSH server name, or None when the job never got a job id
    host: str | None
    rc: int | None
    #: seconds from submission to the last status change (to now while active)
    duration: float | None
    #: the argv list or shell code string from job.cmd
    command: str | list[str] | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def command_text(self) -> str:
        """The command as one shell-quoted line, for tables."""
        if self.command is None:
            return ""
        if isinstance(self.command, str):
            return self.command
        return shlex.join(self.command)


def host_from_jid(jid: str | None) -> str | None:
    """The host a job id names.

    SSH job ids are ``<server>:<pid>:<starttime>`` (the server name may hold
    colons itself, so split from the right); a plain pid is a local job.
    """
    if not jid:
        return None
    if jid.isdigit():
        return "local"
    parts = jid.rsplit(":", 2)
    return parts[0] if len(parts) == 3 and parts[0] else jid


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="surrogateescape")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except (FileNotFoundError, NotADirectoryError):
        return None


def _int(text: str | None) -> int | None:
    try:
        return int(text.strip()) if text else None
    except ValueError:
        return None


def _command(text: str | None) -> str | list[str] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, str) or (
        isinstance(value, list) and all(isinstance(v, str) for v in value)
    ):
        return value
    return None


def read_record(metadir: Path, index: int, now: float | None = None) -> JobRecord:
    """What one metadir says; missing files give None fields, never errors."""
    status_text = _read(metadir / "job.status")
    jid = _read(metadir / "job.jid")
    if status_text is None and jid is None and _mtime(metadir / "job.cmd") is None:
        # A metadir is made when a job is fed; nothing in it: never submitted.
        return JobRecord(index, NOT_STARTED, None, None, None, None)
    if status_text is None:
        status_name = JobStatus.QUEUED.name
        parsed = None
    else:
        parsed = JobStatus.parse(status_text)
        status_name = parsed.name if parsed is not None else "UNKNOWN"
    started = _mtime(metadir / "job.cmd") or _mtime(metadir / "job.jid")
    duration = None
    if started is not None and parsed is not None:
        if parsed.is_active:
            duration = max(0.0, (now or time.time()) - started)
        else:
            changed = _mtime(metadir / "job.status")
            if changed is not None:
                duration = max(0.0, changed - started)
    rc = _int(_read(metadir / "job.rc"))
    if parsed == JobStatus.FAILED and (rc == KILLED_RC or _mtime(metadir / "job.killed")):
        status_name = "KILLED"  # as `run` showed it
    return JobRecord(
        index=index,
        status=status_name,
        host=host_from_jid(jid.strip() if jid else None),
        rc=rc,
        duration=duration,
        command=_command(_read(metadir / "job.cmd")),
    )


def _pmap(func: Callable[[_T], _R], items: Iterable[_T]) -> list[_R]:
    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        return list(pool.map(func, items))


def job_indexes(workdir: Path) -> list[int]:
    """The indexes of the metadirs in ``workdir``, in order."""
    with os.scandir(workdir) as it:
        found = [int(e.name) for e in it if e.name.isdigit() and e.is_dir()]
    return sorted(found)


def scan_workdir(workdir: Path) -> list[JobRecord]:
    """Every job's record, in index order (blocking: call it in a thread)."""
    now = time.time()
    return _pmap(lambda i: read_record(workdir / str(i), i, now), job_indexes(workdir))


#: Written by ``xqute-ssh run`` into its workdir: how many jobs the last run had.
RUN_FILE = ".xqute-ssh-run.json"
NOT_STARTED = "NOT_STARTED"


def run_file_text(n_jobs: int) -> str:
    return json.dumps({"jobs": n_jobs, "started": time.time()}) + "\n"


def last_run_size(workdir: Path) -> int | None:
    """How many jobs the last ``xqute-ssh run`` in ``workdir`` had, if known."""
    try:
        data = json.loads((workdir / RUN_FILE).read_text())
        n = data["jobs"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return n if isinstance(n, int) and n >= 0 else None


def scan_last_run(workdir: Path) -> tuple[list[JobRecord], list[int]]:
    """The last run's jobs, and the indexes of older job directories left over.

    A workdir reused by a smaller run still holds the old run's higher job
    directories: they are not this run's jobs.  A job of the run that has no
    directory never started (the run was stopped first): NOT_STARTED.
    Without a run file (a workdir of the Python API) every directory counts.
    """
    n = last_run_size(workdir)
    if n is None:
        return scan_workdir(workdir), []
    now = time.time()
    present = set(job_indexes(workdir))
    stale = sorted(i for i in present if i >= n)

    def record(i: int) -> JobRecord:
        if i not in present:
            return JobRecord(i, NOT_STARTED, None, None, None, None)
        return read_record(workdir / str(i), i, now)

    return _pmap(record, range(n)), stale


def finished_with(metadir: Path, command: str | list[str]) -> bool:
    """Whether this metadir shows ``command`` finished with rc 0.

    The command must match job.cmd exactly: a changed line in ARGFILE is a
    different job and runs again.
    """
    if JobStatus.parse(_read(metadir / "job.status") or "") != JobStatus.FINISHED:
        return False
    if _int(_read(metadir / "job.rc")) != 0:
        return False
    return _command(_read(metadir / "job.cmd")) == command


def resumable(workdir: Path, commands: Sequence[str | list[str]]) -> set[int]:
    """Indexes of the jobs that ``--resume`` skips (blocking: use a thread)."""
    if not workdir.is_dir():
        return set()
    done = _pmap(
        lambda pair: finished_with(workdir / str(pair[0]), pair[1]),
        enumerate(commands),
    )
    return {i for i, ok in enumerate(done) if ok}
