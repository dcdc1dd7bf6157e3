"""Plugin hook specifications (simplug).

Each spec is a documented stub: when it fires and what a return value means.
Implement any subset in a plugin class or module::

    class MyPlugin:
        name = "my-plugin"

        @plugin.impl
        async def on_job_failed(scheduler, job):
            ...

and pass it to ``Xqute(plugins=[MyPlugin])``, or register it under the entry
point group ``xqute_ssh`` (loaded the first time an ``Xqute`` is built, never
at import).

Async hooks are awaited in plugin priority order.  The ``on_jobcmd_*`` hooks
are synchronous because they build the wrapper script text.  Hooks whose
answer matters (``on_shutdown``, ``on_job_submitting``, ``on_job_killing``)
run every plugin and take the first answer that is not None, as in xqute: a
plugin with nothing to say does not hide another's False.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

from simplug import Simplug, SimplugResult

if TYPE_CHECKING:  # pragma: no cover
    from .job import Job
    from .scheduler import Scheduler
    from .xqute import Xqute

plugin = Simplug("xqute_ssh")

_entrypoints_loaded = False


def load_entrypoint_plugins() -> None:
    """Load plugins registered under the ``xqute_ssh`` entry point group, once."""
    global _entrypoints_loaded
    if not _entrypoints_loaded:
        _entrypoints_loaded = True
        plugin.load_entrypoints("xqute_ssh")


@plugin.spec
async def on_init(xqute: Xqute) -> None:
    """Fires when a run starts (``run_until_complete``), before any submission."""


@plugin.spec(result=SimplugResult.TRY_ALL_FIRST_AVAIL)
async def on_shutdown(xqute: Xqute, sig: signal.Signals | None) -> bool | None:
    """Fires when a run ends.

    ``sig`` is the signal that asked for the end (SIGINT, SIGTERM), or None for
    a natural end or a halt.  Returning False on a signal keeps the run going
    (the jobs are left alone); a False on a natural end has nothing to cancel.
    """


@plugin.spec
async def on_job_init(scheduler: Scheduler, job: Job) -> None:
    """Fires once per job when it is created by ``feed``."""


@plugin.spec
async def on_job_queued(scheduler: Scheduler, job: Job) -> None:
    """Fires when a job enters the queue, and again each time it is retried."""


@plugin.spec(result=SimplugResult.TRY_ALL_FIRST_AVAIL)
async def on_job_submitting(scheduler: Scheduler, job: Job) -> bool | None:
    """Fires right before a job is submitted.

    Return False to skip the submission.  A plugin that does so may set the
    job's final status itself (for example FINISHED for a cached result with
    ``await job.set_status(JobStatus.FINISHED)``); otherwise the job ends
    FAILED with "submission cancelled by a plugin" in job.stderr.
    """


@plugin.spec
async def on_job_submitted(scheduler: Scheduler, job: Job) -> None:
    """Fires once the scheduler has accepted the job (it has a job id)."""


@plugin.spec
async def on_job_started(scheduler: Scheduler, job: Job) -> None:
    """Fires once per attempt, when the job is first seen running (or ended,
    if it was too quick to be seen running)."""


@plugin.spec
async def on_job_polling(scheduler: Scheduler, job: Job, counter: int) -> None:
    """Fires for every active job on every poll cycle; ``counter`` counts cycles."""


@plugin.spec(result=SimplugResult.TRY_ALL_FIRST_AVAIL)
async def on_job_killing(scheduler: Scheduler, job: Job) -> bool | None:
    """Fires before a job is killed; return False to leave it running."""


@plugin.spec
async def on_job_killed(scheduler: Scheduler, job: Job) -> None:
    """Fires after a job was killed (it ends FAILED; on_job_failed does not fire)."""


@plugin.spec
async def on_job_failed(scheduler: Scheduler, job: Job) -> None:
    """Fires when a job failed for good: not when a retry follows."""


@plugin.spec
async def on_job_succeeded(scheduler: Scheduler, job: Job) -> None:
    """Fires when a job finished with return code 0."""


@plugin.spec(result=SimplugResult.ALL_AVAILS)
def on_jobcmd_init(scheduler: Scheduler, job: Job) -> str | None:
    """Bash inserted at the start of the wrapper, before ``prescript``.

    Runs inside a bash function in the wrapper; export what the job needs.
    """


@plugin.spec(result=SimplugResult.ALL_AVAILS)
def on_jobcmd_prep(scheduler: Scheduler, job: Job) -> str | None:
    """Bash inserted right before the command runs (after ``prescript``)."""


@plugin.spec(result=SimplugResult.ALL_AVAILS)
def on_jobcmd_end(scheduler: Scheduler, job: Job) -> str | None:
    """Bash inserted after the command ended, before ``postscript``.

    ``$rc`` holds the command's return code; setting ``rc`` changes what is
    recorded in job.rc and whether the job counts as FINISHED (0) or FAILED.
    """
