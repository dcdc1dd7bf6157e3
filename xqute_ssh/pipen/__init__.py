"""xqute_ssh as a pipen scheduler (``pip install "xqute-ssh[pipen]"``).

pipen finds the schedulers by name through its ``pipen_sched`` entry points:

* ``scheduler="xqute_ssh"`` with ``scheduler_opts={"servers": ...}`` (the
  options of ``Xqute("ssh")``): every job runs on the SSH hosts;
* ``scheduler="xqute_ssh_local"``: jobs run on this machine the way our local
  scheduler runs them;
* ``scheduler="xqute_ssh_slurm"`` with ``scheduler_opts={"login": ...}`` (the
  options of ``Xqute("slurm")``): every job is a Slurm job, submitted on the
  cluster's login node over SSH.

Nothing here is imported by the rest of xqute_ssh: pipen and xqute are
optional, and only :mod:`xqute_ssh.pipen.scheduler` imports them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PipenLocalScheduler", "PipenSlurmScheduler", "PipenSshScheduler"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import scheduler

        return getattr(scheduler, name)
    raise AttributeError(name)
