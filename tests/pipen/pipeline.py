"""A real pipen pipeline, run in its own process by the tests.

Own process because importing xqute sets uvloop as the event-loop policy
for the whole interpreter, and because Ctrl-C and halt signal the process.

Usage: python pipeline.py CONFIG.json; the result goes to config["result"].
Three processes: P1 (4 jobs) -> P2 (4 jobs) -> P3 (1 job gathering P2);
config "procs": 2 leaves P3 out.
A pipen plugin records, per process and job, what the tests check: which
host ran each attempt, the SSH connections still open when the process is
done, and the events.  It also adds on_jobcmd_* bash to every job.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from pipen import Pipen, Proc
from pipen.pluginmgr import plugin

CONFIG: dict[str, Any] = json.loads(Path(sys.argv[1]).read_text())
MARKS = CONFIG["marks"]  # a directory the jobs write markers into
RECORD: dict[str, Any] = {"procs": {}, "events": []}


def ssh_sockets() -> int:
    """This process's open TCP connections to the servers' ports, from
    /proc (what the kernel says, not what the pool thinks)."""
    servers = (CONFIG.get("scheduler_opts") or {}).get("servers") or {}
    ports = {int(spec["port"]) for spec in servers.values()}
    mine = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            mine.add(target[8:-1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port in ports and fields[9] in mine and fields[3] != "06":
                count += 1  # state 06 is TIME_WAIT: already closed by us
    return count


def _host(job: Any) -> str | None:
    sched = job.proc.xqute.scheduler
    return sched.host_of(job) if hasattr(sched, "host_of") else None


class Recorder:
    name = "recorder"

    @plugin.impl
    async def on_job_failed(job: Any) -> None:  # type: ignore[misc]
        RECORD["events"].append(
            ["failed", job.proc.name, job.index, job.trial_count, _host(job)]
        )

    @plugin.impl
    async def on_job_succeeded(job: Any) -> None:  # type: ignore[misc]
        RECORD["events"].append(
            ["succeeded", job.proc.name, job.index, job.trial_count, _host(job)]
        )

    @plugin.impl
    async def on_proc_done(proc: Any, succeeded: Any) -> None:  # type: ignore[misc]
        sched = proc.xqute.scheduler
        RECORD["procs"][proc.name] = {
            "succeeded": succeeded,
            "open_connections": (
                sched.open_connections() if hasattr(sched, "open_connections") else None
            ),
            "workdir": str(proc.workdir),
            "ssh_sockets": ssh_sockets(),
        }

    @plugin.impl
    def on_jobcmd_init(job: Any) -> str:  # type: ignore[misc]
        return "export FROM_INIT_HOOK=init-ok"

    @plugin.impl
    def on_jobcmd_prep(job: Any) -> str:  # type: ignore[misc]
        # xqute's contract: $cmd holds the command and may be replaced
        return 'echo "prep $cmd" > "$PIPEN_JOB_METADIR/prep.txt"; cmd="PREP_SEEN=1 $cmd"'

    @plugin.impl
    def on_jobcmd_end(job: Any) -> str:  # type: ignore[misc]
        return 'echo "end rc=$rc" > "$PIPEN_JOB_METADIR/end.txt"'


SCENARIO = CONFIG["scenario"]
# Job scripts per scenario (liquid templates; in.a is 0..3).
P1_SCRIPT = {
    "ok": 'echo "{{in.a}} $FROM_INIT_HOOK ${PREP_SEEN:-} $PIPEN_JOB_INDEX" > {{out.outfile}}',
    "fail": "[ {{in.a}} = 2 ] && exit 3; echo {{in.a}} > {{out.outfile}}",
    "fail_stderr": (
        "if [ {{in.a}} = 2 ]; then echo 'no good: a=2' >&2; exit 3; fi; "
        "echo {{in.a}} > {{out.outfile}}"
    ),
    "missing": "[ {{in.a}} = 1 ] || echo {{in.a}} > {{out.outfile}}",
    # job 1's wrapper dies without recording an end (as if OOM-killed)
    "vanish": (
        "if [ {{in.a}} = 1 ]; then read -r pid _ < \"$XQUTE_JOB_METADIR/job.pid\"; "
        "kill -KILL \"$pid\"; exit 0; fi; echo {{in.a}} > {{out.outfile}}"
    ),
    "retry": (
        "if [ {{in.a}} = 1 ] && [ ! -e MARKS/retried ]; then touch MARKS/retried; exit 5; fi; "
        "echo {{in.a}} > {{out.outfile}}"
    ),
    # every job fails: whichever runs first must be the only one that ran
    "halt": "touch MARKS/ran.{{in.a}}; exit 4",
    "sleep": "echo $$ > MARKS/pid.{{in.a}}; exec sleep 300",
}[SCENARIO].replace("MARKS", shlex.quote(MARKS))


class P1(Proc):
    """Four jobs (config "jobs")."""

    input = "a"
    input_data = list(range(CONFIG.get("jobs", 4)))
    output = "outfile:file:a{{in.a}}.txt"
    script = P1_SCRIPT


class P2(Proc):
    """One job per P1 job, each doubling its output."""

    requires = P1
    input = "infile:file"
    output = "outfile:file:b{{job.index}}.txt"
    script = "cat {{in.infile}} {{in.infile}} > {{out.outfile}}"


if CONFIG.get("procs", 3) >= 3:

    class P3(Proc):
        """One job gathering P2's outputs."""

        requires = P2
        input = "infiles:files"
        input_data = lambda ch: [list(ch.iloc[:, 0])]  # noqa: E731
        output = "outfile:file:all.txt"
        script = "cat {{in.infiles | join: ' '}} > {{out.outfile}}"


def main() -> None:
    if CONFIG.get("debug"):
        import logging

        logging.basicConfig(level=logging.DEBUG, format="%(relativeCreated)6d %(name)s %(message)s")
        logging.getLogger("asyncssh").setLevel(logging.WARNING)
    pipeline = Pipen(
        name="xqtest",
        outdir=CONFIG["outdir"],
        workdir=CONFIG["workdir"],
        scheduler=CONFIG["scheduler"],
        scheduler_opts=CONFIG.get("scheduler_opts") or {},
        forks=CONFIG.get("forks", 4),
        error_strategy=CONFIG.get("error_strategy", "ignore"),
        num_retries=CONFIG.get("num_retries", 0),
        plugins=[Recorder],
        loglevel=CONFIG.get("loglevel", "info"),
    ).set_starts(P1)
    started = time.perf_counter()
    try:
        RECORD["succeeded"] = bool(pipeline.run())
        RECORD["seconds"] = time.perf_counter() - started
    finally:
        Path(CONFIG["result"]).write_text(json.dumps(RECORD))


if __name__ == "__main__":
    main()
