"""Fencing: when may the jobs of an unreachable host be given up?

A host that does not answer may still run its jobs (sshd died, the network
was cut).  Starting such a job elsewhere could run it twice, so a job is
only treated as dead once that is known:

* the host answers again and says the process is gone (the normal check);
* where the workdir is shared, the job's heartbeat (the mtime of its
  ``job.pid``, touched by its wrapper every few seconds) has not changed
  for ``lease`` seconds (at least ``lost_after``): a lease that ran out.  A
  job whose heartbeat goes on is alive and waited for; its own status file
  will tell when it ends;
* otherwise (no shared workdir, or no heartbeat to read) nothing here can
  tell: after ``lost_after`` the job is given up so the run can end
  (liveness), but it is *fenced*: never retried in this run and its files
  are left as they are, for a later controller to settle with the host.

Pure bookkeeping: the scheduler feeds it heartbeat readings and times.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable


class Verdict(enum.Enum):
    WAIT = "wait"  #: keep watching the job
    DEAD = "dead"  #: its lease ran out: fail it (a retry may run elsewhere)
    FENCED = "fenced"  #: unknown: give it up, never retry it in this run


class Fence:
    """Heartbeat leases of the jobs on unreachable hosts.

    Args:
        lost_after: seconds a host may stay unreachable (and a heartbeat may
            stay unchanged) before its jobs are given up.
    """

    def __init__(self, lost_after: float) -> None:
        self.lost_after = lost_after
        #: How long an unchanged heartbeat means dead: at least three beats.
        self.lease = max(float(lost_after), 3.0)
        #: What the wrappers are told (whole seconds).
        self.heartbeat_interval = float(max(1, min(int(self.lease // 3), 10)))
        #: job -> (last heartbeat reading, when it last changed)
        self._beats: dict[int, tuple[Hashable, float]] = {}

    def __repr__(self) -> str:
        return f"<Fence lost_after={self.lost_after} leases={len(self._beats)}>"

    def verdict(
        self,
        job: int,
        beat: Hashable | None,
        unreachable_for: float,
        now: float,
    ) -> Verdict:
        """Decide for one job of an unreachable host.

        ``beat`` is the job's heartbeat reading now (e.g. the file's mtime),
        None when there is none to read (no shared workdir, no heartbeat).
        The first reading starts the lease.
        """
        if beat is not None:
            last = self._beats.get(job)
            if last is None or last[0] != beat:
                self._beats[job] = (beat, now)
        if unreachable_for < self.lost_after:
            return Verdict.WAIT
        last = self._beats.get(job)
        if beat is None or last is None:
            return Verdict.FENCED
        return Verdict.DEAD if now - last[1] >= self.lease else Verdict.WAIT

    def forget(self, job: int) -> None:
        """The job's host answered again (or the job ended)."""
        self._beats.pop(job, None)
