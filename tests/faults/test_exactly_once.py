"""Exactly once across controller deaths: SIGKILL the controller (its own
process) at many moments of a run, start it again on the same workdir, and
count from marker files how often each job really ran.

Every job appends "start" and "end" to its own marker file; jobs whose index
is a multiple of 5 exit 3.  After the last controller, every marker must read
exactly ``start\\nend\\n`` and every job must end with the right status and rc
(FINISHED 0, or FAILED 3), whether the kill landed before any job ended,
while some had ended (seen by the dead controller or not), when almost all
had, or twice in a row; on hosts that share the workdir, on hosts that do
not, and with the local scheduler.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

N_JOBS = 20
SLEEP = 0.6

CONTROLLER = """
import asyncio, json, logging, os, signal, sys
from xqute_ssh import Xqute
logging.basicConfig(
    filename=os.environ["XQ_TEST_LOG"], level=logging.DEBUG,
    format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
servers, workdir, markers, n, sleep = (
    json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
def dump_tasks():
    # The test sends SIGUSR1 to a controller that hangs: say where each
    # task waits, so the failure names the culprit.
    import io
    out = io.StringIO()
    for task in asyncio.all_tasks():
        out.write(f"{task.get_name()}:\\n")
        coro = task.get_coro()
        while coro is not None and hasattr(coro, "cr_frame"):
            frame = coro.cr_frame
            if frame is not None:
                out.write(f"  {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}\\n")
            coro = coro.cr_await
        out.write(f"  waits on {coro!r}\\n")
    logging.getLogger("test").error("tasks at the hang:\\n%s", out.getvalue())
async def main():
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump_tasks)
    if servers:
        xq = Xqute("ssh", forks=8, workdir=workdir,
                   scheduler_opts={"servers": servers, "poll_interval": 0.05})
    else:
        xq = Xqute("local", forks=8, workdir=workdir)
    for i in range(n):
        rc = 3 if i % 5 == 0 else 0
        await xq.feed(["bash", "-c",
            'echo start >> "$1"; sleep "$2"; echo end >> "$1"; exit "$3"',
            "_", f"{markers}/{i}", sleep, str(rc)])
    await xq.run_until_complete()
    print(json.dumps([[j.status.name, await j.get_rc()] for j in xq.jobs]))
asyncio.run(main())
"""


def _counts(markers: Path) -> tuple[int, int]:
    """(jobs started, jobs ended) according to the marker files."""
    started = ended = 0
    for f in markers.iterdir():
        text = f.read_text()
        started += text.count("start")
        ended += text.count("end")
    return started, ended


async def _kill_when(args: list[str], markers: Path, started: int, ended: int) -> None:
    """Start a controller; SIGKILL it once the markers show the counts."""
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        async with asyncio.timeout(60):  # hang guard
            while True:
                s, e = _counts(markers)
                if s >= started and e >= ended:
                    break
                if proc.returncode is not None:
                    err = (await proc.stderr.read()).decode()  # type: ignore[union-attr]
                    raise AssertionError(f"the controller ended before the kill: {err}")
                await asyncio.sleep(0.01)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        await proc.wait()


async def _run_to_end(args: list[str]) -> list[list[Any]]:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        async with asyncio.timeout(90):  # hang guard
            out, err = await proc.communicate()
    except TimeoutError:
        proc.send_signal(signal.SIGUSR1)
        await asyncio.sleep(1)  # let it write where its tasks wait
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        log = await asyncio.to_thread(Path(os.environ["XQ_TEST_LOG"]).read_text)
        at = log.rfind("tasks at the hang")
        raise AssertionError(f"the last controller hung:\n{log[at:][:8000]}") from None
    assert proc.returncode == 0, err.decode()[-3000:]
    return json.loads(out.decode().splitlines()[-1])


#: (name, [(jobs started, jobs ended) at each kill])
MOMENTS = {
    "before_any_end": [(8, 0)],
    "some_ended": [(N_JOBS // 2, N_JOBS // 2 - 4)],
    "almost_all_ended": [(N_JOBS, N_JOBS - 2)],
    "twice": [(6, 3), (N_JOBS - 2, N_JOBS - 6)],
}


def _workdirs(kind: str, factory: Any, tmp_path: Path) -> tuple[dict[str, Any], Path]:
    if kind == "local":
        return {}, tmp_path / "wd"
    if kind == "shared":
        cluster = factory(n=2)
        return {h.name: h.server_spec() for h in cluster.hosts}, tmp_path / "wd"
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    cluster = factory(n=2, private_dirs=(str(hidden),))
    return {h.name: h.server_spec() for h in cluster.hosts}, hidden / "wd"


#: Kept to about a minute in CI.  The unshared "before any end" case is also
#: tests/ssh/test_unshared.py::test_restart_reattaches_unshared_jobs; locally
#: two moments are enough (the SSH runs cover the rest).
CASES = [
    *(("shared", m) for m in MOMENTS),
    *(("unshared", m) for m in MOMENTS if m != "before_any_end"),
    ("local", "some_ended"),
    ("local", "twice"),
]


@pytest.mark.parametrize(("kind", "moment"), CASES)
async def test_controller_killed_each_job_runs_exactly_once(
    kind: str,
    moment: str,
    sshd_cluster_factory: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    servers, workdir = _workdirs(kind, sshd_cluster_factory, tmp_path)
    monkeypatch.setenv("XQ_TEST_LOG", str(tmp_path / "controllers.log"))
    script = tmp_path / "controller.py"
    script.write_text(CONTROLLER)
    markers = tmp_path / "markers"
    markers.mkdir()
    args = [
        sys.executable, str(script), json.dumps(servers), str(workdir),
        str(markers), str(N_JOBS), str(SLEEP),
    ]
    for started, ended in MOMENTS[moment]:
        await _kill_when(args, markers, started, ended)
    result = await _run_to_end(args)

    twice = {
        int(f.name): f.read_text()
        for f in markers.iterdir()
        if f.read_text() != "start\nend\n"
    }
    if twice:
        log = (tmp_path / "controllers.log").read_text().splitlines()
        said = [
            line for line in log
            if "asyncssh" not in line and any(
                f"Job-{i} " in line or f"job {i}:" in line for i in twice
            )
        ]
        joined = "\n".join(said)
        raise AssertionError(
            f"{len(twice)} of {N_JOBS} jobs did not run exactly once: {twice}\n{joined}"
        )
    expected = [["FAILED", 3] if i % 5 == 0 else ["FINISHED", 0] for i in range(N_JOBS)]
    assert result == expected
