"""A tiny per-host init process, and the /proc process-tree tools it needs.

Every test host gets one reaper: a child-subreaper (``PR_SET_CHILD_SUBREAPER``)
that starts the host's ``sshd`` on request.  Because it is a subreaper, every
process the host's users start stays its descendant even after ``setsid`` or
a double fork, so "everything this host runs" is simply "the reaper's
descendants": nothing can slip out of the harness's sight.  It also reaps the
orphans (pid 1 in some containers never does) and, when its stdin closes
(the controller exited, even by SIGKILL), kills everything under it.

The reaper runs inside the host's namespaces (a private mount namespace with
tmpfs mounts, a network namespace), so the sshd it starts and every session
inherit them and the namespaces live as long as the host does.

This file is run as a script with ``python -I`` (stdlib only, fast to start)
and imported by the harness for the /proc helpers.

Protocol (one line each way, over stdin/stdout; fields split by NUL bytes):
    -> ``spawn\0LOGFILE\0ARGV0\0ARGV1...``  <- ``pid N`` | ``error MSG``
    EOF on stdin: kill every descendant, reap them, exit.
Imports are kept to a minimum: every host pays this interpreter's start-up.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Iterable

PR_SET_CHILD_SUBREAPER = 36


class Proc:
    """One line of /proc/PID/stat, the fields the harness needs."""

    __slots__ = ("comm", "pid", "ppid", "sid", "starttime", "state")

    def __init__(self, pid: int, ppid: int, sid: int, state: str, comm: str, starttime: int):
        self.pid, self.ppid, self.sid = pid, ppid, sid
        self.state, self.comm, self.starttime = state, comm, starttime

    def __repr__(self) -> str:
        return f"<Proc {self.pid} ({self.comm}) {self.state} ppid={self.ppid} sid={self.sid}>"

    @property
    def alive(self) -> bool:
        """False for zombies and dead tasks: they run nothing any more."""
        return self.state not in ("Z", "X", "x")


def read_proc(pid: int) -> Proc | None:
    """Parse /proc/PID/stat; None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode(errors="replace")
    except OSError:
        return None
    # comm may hold spaces and parentheses: it ends at the LAST ')'
    head, _, rest = raw.rpartition(")")
    comm = head.partition("(")[2]
    f = rest.split()
    return Proc(pid, int(f[1]), int(f[3]), f[0], comm, int(f[19]))


def snapshot() -> dict[int, Proc]:
    """Every process visible in /proc right now."""
    procs: dict[int, Proc] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            p = read_proc(int(name))
            if p is not None:
                procs[p.pid] = p
    return procs


def descendants(procs: dict[int, Proc], root: int) -> set[int]:
    """Pids below ``root`` (not ``root`` itself), by following parent pids."""
    children: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def freeze_and_kill(select_pids: Callable[[dict[int, Proc]], Iterable[int]]) -> set[int]:
    """SIGKILL every process that ``select_pids`` picks, with no fork escaping.

    Killing a tree one process at a time races with forks: a parent may start
    a child between our look and our kill.  So first SIGSTOP what we see, look
    again (stopped processes cannot fork) until nothing new shows up, and only
    then SIGKILL them all.  Returns the pids that were signalled.
    """
    frozen: dict[int, int] = {}
    for _ in range(100):
        procs = snapshot()
        new = [pid for pid in select_pids(procs) if pid not in frozen and procs[pid].alive]
        if not new:
            break
        for pid in new:
            if _signal(pid, signal.SIGSTOP):
                frozen[pid] = procs[pid].starttime
    for pid, start in frozen.items():
        p = read_proc(pid)
        if p is not None and p.starttime == start:  # not a recycled pid
            _signal(pid, signal.SIGKILL)
    return set(frozen)


def wait_gone(pids: Iterable[int], timeout: float) -> set[int]:
    """Wait until none of ``pids`` is alive (zombies count as gone).

    Returns the pids still alive when ``timeout`` ran out (empty on success).
    """
    left = set(pids)
    deadline = time.monotonic() + timeout
    while True:
        left = {pid for pid in left if (p := read_proc(pid)) is not None and p.alive}
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.005)


def _signal(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


# ---------------------------------------------------------------- the reaper
def _reap_all() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _spawn(log: str, argv: list[str]) -> int:
    # sshd must not inherit Python's ignored SIGPIPE/SIGXFSZ: its sessions would
    # (ignored dispositions survive exec) and `yes | head` would misbehave.
    return os.posix_spawn(
        argv[0],
        argv,
        dict(os.environ),
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ],
        setsid=True,
        setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD),
        setsigmask=(),
    )


def _mount_tmpfs(directory: str) -> str:
    """Mount a fresh tmpfs on ``directory``; returns an error message or ''."""
    argv = ["mount", "-t", "tmpfs", "-o", "mode=1777", "xqute-ssh-private", directory]
    for d in ("/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        if os.access(f"{d}/mount", os.X_OK):
            argv[0] = f"{d}/mount"
            break
    try:
        pid = os.posix_spawn(argv[0], argv, dict(os.environ))
    except OSError as exc:
        return str(exc)
    status = os.waitpid(pid, 0)[1]
    return "" if os.waitstatus_to_exitcode(status) == 0 else f"{' '.join(argv)} failed"


def _kill_everything() -> None:
    me = os.getpid()
    freeze_and_kill(lambda procs: descendants(procs, me))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        _reap_all()
        if not any(p.alive for p in map(read_proc, descendants(snapshot(), me)) if p):
            break
        time.sleep(0.01)
    _reap_all()


def main(argv: list[str]) -> int:
    """Run as the host's init: mount tmpfs dirs, then serve spawn requests."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print(f"error prctl: {os.strerror(ctypes.get_errno())}", flush=True)
        return 1
    for directory in argv:
        error = _mount_tmpfs(directory)
        if error:  # mount's own message went to our stderr (the harness's file)
            print(f"error {error}", flush=True)
            return 1

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: None)  # wakes select; treated as "exit"
    stopping = False
    print("ready", flush=True)

    buf = b""
    while not stopping:
        ready, _, _ = select.select([0, wake_r], [], [])
        if wake_r in ready:
            sigs = os.read(wake_r, 512)
            stopping = any(s in sigs for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
        _reap_all()
        if 0 in ready:
            chunk = os.read(0, 65536)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                cmd, *args = os.fsdecode(line).split("\0")
                try:
                    if cmd != "spawn" or len(args) < 2:
                        raise ValueError(f"bad request {cmd!r}")
                    reply = f"pid {_spawn(args[0], args[1:])}"
                except Exception as exc:  # reported to the harness, never fatal
                    reply = f"error {type(exc).__name__}: {exc}"
                try:
                    print(reply, flush=True)
                except BrokenPipeError:  # the controller is gone
                    stopping = True
    _kill_everything()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
