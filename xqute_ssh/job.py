"""Job: one command, one metadata directory.

The on-disk layout is xqute's, so existing tools read it::

    <workdir>/<index>/job.wrapped.<scheduler>   the script that runs
                     /job.stdout, job.stderr      the command's output
                     /job.status                  an int (JobStatus)
                     /job.rc                      the return code
                     /job.jid                     the scheduler's job id
                     /job.cmd                     the command, as JSON
                     /job.retry/<trial>/          an earlier attempt's files

The files written by the wrapper on the host are the source of truth.  The
in-memory ``status`` is the last status the engine has acted on (fired hooks
for); the poller moves it forward through ``Scheduler.transition_job_status``.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import time
from collections.abc import Mapping, Sequence
from typing import Any

from . import fileio
from .errors import ConfigError
from .path import SpecPath
from .staging import StageIn, StageOut
from .status import JobStatus

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Names the engine sets for every job; a user may not override them.
RESERVED_ENVS = frozenset({"XQUTE_JOB_INDEX", "XQUTE_METADIR", "XQUTE_JOB_METADIR"})


def normalize_cmd(cmd: str | Sequence[Any], allow_empty: bool = False) -> str | list[str]:
    """Check a command and turn its items into strings.

    A string is shell code (run by bash); a sequence is an argv whose items
    reach the program byte for byte.  ``allow_empty`` lets a job be created
    before its command is known (frameworks set ``job.cmd`` later); an empty
    command is refused when the job is submitted.
    """
    if isinstance(cmd, str):
        if not cmd.strip() and not allow_empty:
            raise ConfigError("the command is empty: give a program to run")
        if "\0" in cmd:
            raise ConfigError(
                "the command contains a NUL byte, which no shell can pass"
            )
        return cmd
    if isinstance(cmd, bytes | bytearray):
        raise ConfigError("give the command as str or a list of str, not bytes")
    items = [
        (os_fsdecode(item) if isinstance(item, bytes) else str(item)) for item in cmd
    ]
    if (not items or items[0] == "") and not allow_empty:
        raise ConfigError("the command is empty: give a program to run")
    for item in items:
        if "\0" in item:
            raise ConfigError(
                f"command argument {item!r} contains a NUL byte, which no program "
                "can receive"
            )
    return items


def os_fsdecode(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def normalize_envs(envs: Mapping[str, Any] | None) -> dict[str, str]:
    """Check env names (shell identifiers) and values (no NUL), as strings.

    Values go through ``str()``: an int 0 becomes "0".
    """
    if envs is not None and not isinstance(envs, Mapping):
        raise ConfigError(
            f"envs must be a mapping of names to values, not {type(envs).__name__}"
        )
    out: dict[str, str] = {}
    for name, value in (envs or {}).items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise ConfigError(
                f"env name {name!r} is not a shell identifier "
                "(letters, digits and _, not starting with a digit)"
            )
        if name in RESERVED_ENVS:
            raise ConfigError(f"env name {name!r} is set by xqute_ssh itself")
        if value is None:
            raise ConfigError(f"env {name!r} has the value None; give a string")
        text = os_fsdecode(value) if isinstance(value, bytes) else str(value)
        if "\0" in text:
            raise ConfigError(f"env {name!r} contains a NUL byte")
        out[name] = text
    return out


#: What ``get_rc()`` returns when no return code was recorded (xqute's value).
NO_RC = -9


class Job:
    """One command and its metadata directory.

    Args:
        index: position in the run; names the metadir.
        cmd: shell code (str) or an argv (sequence).  It may be empty at
            creation (a framework sets ``job.cmd`` later), not at submission.
        workdir: the run's workdir (a SpecPath, or anything path-like).
        envs: extra environment variables for the job's process.
        error_retry, num_retries: what the scheduler's error strategy says,
            kept for frameworks written for xqute (``_error_retry``,
            ``_num_retries``); the scheduler decides retries itself.

    Subclasses may declare ``__slots__ = Job.__slots__ + ("more",)``, as
    xqute's allow; subclasses without ``__slots__`` get a ``__dict__``.
    """

    __slots__ = (
        "_cmd",
        "_dir_pending",
        "_error_retry",
        "_files",
        "_fresh",
        "_jid",
        "_num_retries",
        "_prepare_pending",
        "_retry_pending",
        "_started_hook_done",
        "_status",
        "ended_at",
        "envs",
        "extra",
        "index",
        "metadir",
        "stage_in",
        "stage_out",
        "submitted_at",
        "trial_count",
    )

    def __init__(
        self,
        index: int,
        cmd: str | Sequence[Any],
        workdir: SpecPath | str,
        envs: Mapping[str, Any] | None = None,
        *,
        error_retry: bool | None = None,
        num_retries: int | None = None,
    ) -> None:
        self.index = index
        self._cmd: str | list[str] = normalize_cmd(cmd, allow_empty=True)
        self.envs: dict[str, str] = normalize_envs(envs)
        self.metadir: SpecPath = SpecPath(workdir) / str(index)
        self.trial_count = 0
        self._error_retry = error_retry
        self._num_retries = num_retries
        #: Free-form data a scheduler keeps about the current attempt
        #: (the SSH scheduler records the host here).
        self.extra: dict[str, Any] = {}
        #: Files moved to the job's directory before it runs / back after.
        self.stage_in: list[StageIn] = []
        self.stage_out: list[StageOut] = []
        self._status = JobStatus.INIT
        self._jid: str | None = None
        self._started_hook_done = False
        self._retry_pending = False
        #: The metadir was made by this process and no attempt has been
        #: prepared in it: there is no earlier attempt to look for.
        self._fresh = False
        #: The metadir is being made (Xqute.feed with no plugin that needs
        #: it at once); submission waits for it.  Cleared once it exists;
        #: kept, with the error, if it could not be made.
        self._dir_pending: asyncio.Future[None] | OSError | None = None
        self._prepare_pending = False
        self.submitted_at: float | None = None
        self.ended_at: float | None = None
        self._files: dict[str, SpecPath] = {}

    def __repr__(self) -> str:
        jid = f" jid={self._jid}" if self._jid else ""
        name = type(self).__name__
        return f"<{name}-{self.index} {self._status.name}{jid}: {self.strcmd[:60]}>"

    @property
    def cmd(self) -> str | list[str]:
        """Shell code (str) or an argv (list of str)."""
        return self._cmd

    @cmd.setter
    def cmd(self, value: str | Sequence[Any]) -> None:
        # Frameworks set the command after creating the job (pipen does).
        self._cmd = normalize_cmd(value, allow_empty=True)

    # ------------------------------------------------------------ files
    def _file(self, name: str) -> SpecPath:
        # Made once per job (the poller asks on every cycle), again if a
        # framework moved the job's metadir.
        files = self._files
        if files.get("") is not self.metadir:
            files.clear()
            files[""] = self.metadir
        path = files.get(name)
        if path is None:
            path = files[name] = self.metadir / name
        return path

    @property
    def stdout_file(self) -> SpecPath:
        return self._file("job.stdout")

    @property
    def stderr_file(self) -> SpecPath:
        return self._file("job.stderr")

    @property
    def status_file(self) -> SpecPath:
        return self._file("job.status")

    @property
    def rc_file(self) -> SpecPath:
        return self._file("job.rc")

    @property
    def jid_file(self) -> SpecPath:
        return self._file("job.jid")

    @property
    def cmd_file(self) -> SpecPath:
        """``job.cmd``: the command as JSON (a list, or a string of shell code).

        Written at each submission so tools (``xqute-ssh status``, ``--resume``)
        can tell which command a metadir belongs to.
        """
        return self._file("job.cmd")

    @property
    def retry_dir(self) -> SpecPath:
        return self._file("job.retry")

    def wrapped_script_file(self, scheduler_name: str) -> SpecPath:
        return self.metadir / f"job.wrapped.{scheduler_name}"

    def cmd_json(self) -> str:
        return json.dumps(self.cmd, ensure_ascii=False) + "\n"

    @property
    def strcmd(self) -> str:
        """The command as one shell-quoted line, for logs and displays."""
        if isinstance(self.cmd, str):
            return self.cmd
        return shlex.join(self.cmd)

    # ----------------------------------------------------------- status
    @property
    def status(self) -> JobStatus:
        """The last status the engine acted on (no I/O)."""
        return self._status

    async def get_status(self, refresh: bool = False) -> JobStatus:
        """The job's status; with ``refresh``, what its status file says now.

        Refreshing reads the file only while the job is active (the wrapper
        writes it then); it does not change ``status`` or fire hooks, which
        is the poller's job.
        """
        if refresh and self._status.is_active:
            parsed = JobStatus.parse(await fileio.read_text(self.status_file) or "")
            if parsed is not None:
                return parsed
        return self._status

    async def set_status(self, status: JobStatus | int, flush: bool = True) -> None:
        """Set the status; with ``flush`` (default) write job.status too.

        No hooks fire: this is for plugins that decide a job's outcome
        themselves (a cached result, a check of its outputs).  The engine
        moves statuses through ``Scheduler.transition_job_status``.
        """
        status = JobStatus(status)
        if flush:
            await fileio.write_text(self.status_file, f"{int(status)}\n")
        self._set_status_nofile(status)

    def _set_status_nofile(self, status: JobStatus) -> None:
        if status.is_active and self.submitted_at is None:
            self.submitted_at = time.time()
        if status.is_terminal:
            self.ended_at = time.time()
        self._status = status

    async def read_rc(self) -> int | None:
        """The return code from job.rc, or None when none was recorded."""
        text = await fileio.read_text(self.rc_file)
        try:
            return int(text.strip()) if text else None
        except ValueError:
            return None

    async def get_rc(self) -> int:
        """The return code from job.rc; ``NO_RC`` (-9) when none was recorded.

        An int always, as in xqute, so ``rc != 0`` and ``rc < 0`` work; use
        ``read_rc()`` to tell "no rc" apart.
        """
        rc = await self.read_rc()
        return NO_RC if rc is None else rc

    async def set_rc(self, rc: int | str) -> None:
        """Write job.rc (for plugins that decide a job's outcome)."""
        try:
            code = int(rc)
        except (TypeError, ValueError):
            raise ConfigError(f"a return code is a whole number, not {rc!r}") from None
        await fileio.write_text(self.rc_file, f"{code}\n")

    async def get_jid(self) -> str | None:
        if self._jid is None:
            text = await fileio.read_text(self.jid_file)
            self._jid = (text.strip() or None) if text else None
        return self._jid

    async def set_jid(self, jid: str | int | None) -> None:
        if jid is None or jid == "":
            self._jid = None
            await fileio.unlink(self.jid_file)
            return
        self._jid = str(jid)
        await fileio.write_text(self.jid_file, f"{self._jid}\n")

    @property
    def jid(self) -> str | None:
        """The job id known in memory (no I/O)."""
        return self._jid

    def _attempt_files(self) -> tuple[SpecPath, ...]:
        # job.status first: a controller killed while archiving an attempt
        # leaves a metadir without a final status, which a restart starts
        # anew (the attempt is counted by its job.retry/<n>).
        return (
            self.status_file,
            self.metadir / "job.pid",
            self.stdout_file,
            self.stderr_file,
            self.rc_file,
            self.jid_file,
            self.metadir / "job.killed",
        )

    def _reset_memory(self) -> None:
        self._jid = None
        self._started_hook_done = False
        self.submitted_at = None
        self.ended_at = None

    async def clean(self, retry: bool = False) -> None:
        """Remove the previous attempt's files before a new attempt.

        With ``retry`` they are moved to ``job.retry/<trial_count>/`` instead,
        so nothing of a failed attempt is lost.
        """
        files = self._attempt_files()
        if retry:
            dest = self.retry_dir / str(self.trial_count)
            await fileio.mkdir(dest)
            await fileio.move_many([(f, dest / f.name) for f in files])
        else:
            await fileio.unlink_many(files)
        self._reset_memory()

    def _prepare_submission_sync(self) -> None:
        """Clean, record the command and write SUBMITTED, in one go.

        One worker-thread hop per submission instead of several: submission
        is on the hot path when thousands of short jobs run.
        """
        fileio.mkdir_sync(self.metadir)
        if not self._fresh:  # a new directory has nothing to clean
            for f in self._attempt_files():
                fileio.unlink_sync(f)
        fileio.write_text_sync(self.cmd_file, self.cmd_json())
        fileio.write_text_sync(self.status_file, f"{int(JobStatus.SUBMITTED)}\n")
        self._fresh = False

    async def prepare_submission(self, *, defer: bool = False) -> None:
        """Clean the last attempt's files, write job.cmd and SUBMITTED.

        The in-memory status stays QUEUED: the hooks for SUBMITTED fire once
        the backend has really started the job.  With ``defer`` the files
        are written by :meth:`prepare_pending_sync`, which the backend calls
        in its own thread hop before it starts the job (the SSH backend: with
        the script; one hop per job fewer).
        """
        # A job may be created with an empty command and given one later;
        # by now it must have one.
        self._cmd = normalize_cmd(self._cmd)
        if defer:
            self._prepare_pending = True
        else:
            self._prepare_pending = False
            await fileio.small(fileio.is_local(self.metadir), self._prepare_submission_sync)
        self._reset_memory()

    def prepare_pending_sync(self) -> None:
        """Write what a deferred :meth:`prepare_submission` left (blocking)."""
        if self._prepare_pending:
            self._prepare_submission_sync()
            self._prepare_pending = False

    async def prepare_pending(self) -> None:
        """:meth:`prepare_pending_sync` in a worker thread, if anything is left."""
        if self._prepare_pending:
            await fileio.small(fileio.is_local(self.metadir), self.prepare_pending_sync)
