"""``xqute-ssh run``: feed the jobs of a RunPlan to an Xqute and report.

Order matters for Ctrl-C.  The first job is fed alone (it creates the
workdir, so a bad ``-w`` fails before anything runs) and the scheduler is set
up (``post_init``: SSH connections) before the run starts, so a Ctrl-C up to
then finds no job running.  From the start of the run the engine's own
signal handlers are installed before any job is submitted: a Ctrl-C kills
the jobs, fires ``on_shutdown`` with the signal, and the run returns; we
then exit 128 + the signal's number (130 for SIGINT).

The rest of the jobs are fed while the first ones already run, so a long
ARGFILE does not delay the start.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from .. import fileio
from ..errors import ConfigError, WorkdirError
from ..status import JobStatus
from ..xqute import Xqute
from .args import RunPlan, UsageError, make_plan
from .joboutput import ConsoleSink, JobLog, JobOutput, StdSink
from .output import Mode, Output
from .progress import RunMonitor
from .summary import print_summary
from .tally import Tally
from .workdir import RUN_FILE, resumable, run_file_text


def _build(plan: RunPlan, monitor: RunMonitor) -> Xqute:
    """The Xqute for a plan; bad scheduler options become usage errors."""
    try:
        return Xqute(
            plan.scheduler,
            plugins=[monitor],
            workdir=plan.workdir,
            forks=plan.forks,
            error_strategy=plan.error_strategy,
            num_retries=plan.num_retries,
            # Without --resume a run is fresh (ended jobs run again); a job
            # still running from an earlier controller is re-attached either way.
            scheduler_opts={**plan.scheduler_opts, "resume": plan.resume},
        )
    except ConfigError as exc:
        where = plan.servers_flag or "run"
        raise UsageError(f"{where}: {exc}") from None
    except ImportError as exc:
        raise UsageError(
            f"{plan.servers_flag or 'run'}: the {plan.scheduler} scheduler cannot be loaded ({exc})"
        ) from None


async def _feed_and_run(xq: Xqute, plan: RunPlan, monitor: RunMonitor) -> None:
    if not plan.commands:
        return
    try:
        await xq.feed(plan.commands[0])
        # `status` shows this run's jobs: none of an earlier, larger run's,
        # and also the ones a Ctrl-C stops before they start.
        await fileio.write_text(plan.workdir_path / RUN_FILE, run_file_text(len(plan.commands)))
    except WorkdirError as exc:
        raise UsageError(f"-w/--workdir: {exc}") from None
    except OSError as exc:
        raise UsageError(f"-w/--workdir: cannot write in it: {exc.strerror or exc}") from None
    try:
        await xq.scheduler.post_init()
    except BaseException:
        await xq.scheduler.shutdown()
        raise
    await xq.run_until_complete(keep_feeding=True)
    for cmd in plan.commands[1:]:
        if monitor.shut_down:  # halted or interrupted: the rest never run
            break
        await xq.feed(cmd)
    await xq.stop_feeding()


async def execute(plan: RunPlan, out: Output, verbose: bool = False) -> int:
    """Run a plan with the output chosen; the CLI's exit status.

    0: every job finished (or was skipped by --resume); 1: some failed or
    never ran (--halt); 128 + n: stopped by signal n.
    """
    workdir = plan.workdir_path
    skip: set[int] = set()
    if plan.resume:
        skip = await asyncio.to_thread(resumable, workdir, plan.commands)
    tally = Tally(total=len(plan.commands))
    view = out.view(tally, n_skip=len(skip))
    default_host = "local" if plan.scheduler == "local" else "?"
    sink = ConsoleSink(out.console) if out.mode == Mode.LIVE else StdSink()
    printer = JobOutput(
        sink,
        len(plan.commands),
        plan.tags,
        tag=plan.tag,
        keep_order=plan.keep_order,
        ungroup=plan.ungroup,
    )
    joblog = JobLog(plan.joblog) if plan.joblog else None
    if joblog is not None:
        try:
            await joblog.open()
        except OSError as exc:
            why = exc.strerror or exc
            raise UsageError(f"--joblog: cannot write {plan.joblog!r}: {why}") from None
    monitor = RunMonitor(tally, view, skip, default_host, printer, joblog)
    with out.engine_logging(verbose):
        xq = _build(plan, monitor)
        started = time.monotonic()
        view.start()
        follow = asyncio.create_task(printer.follow_running())
        try:
            await _feed_and_run(xq, plan, monitor)
        finally:
            follow.cancel()
            printer.flush()
            view.stop()
            if joblog is not None:
                await joblog.close()
        print_summary(out, tally, workdir, time.monotonic() - started, monitor.signal)
    if monitor.signal is not None:
        return 128 + int(monitor.signal)
    all_fed = len(xq.jobs) == len(plan.commands)
    ok = all_fed and all(j.status == JobStatus.FINISHED for j in xq.jobs)
    return 0 if ok else 1


def run_command(ns: argparse.Namespace) -> int:
    """The ``run`` subcommand."""
    plan = make_plan(ns)
    out = Output.choose(quiet=ns.quiet)
    return asyncio.run(execute(plan, out, verbose=ns.verbose))
