"""Scheduler backends and how a name becomes a Scheduler class."""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from ..scheduler import Scheduler

#: Built-in backends, imported only when asked for (the SSH one pulls asyncssh).
BUILTIN = {
    "local": "xqute_ssh.schedulers.local:LocalScheduler",
    "ssh": "xqute_ssh.schedulers.ssh:SshScheduler",
    "slurm": "xqute_ssh.schedulers.slurm:SlurmScheduler",
}
ENTRY_POINT_GROUP = "xqute_ssh.schedulers"


def _load(target: str) -> type[Scheduler]:
    module, _, attr = target.partition(":")
    cls: type[Scheduler] = getattr(import_module(module), attr)
    return cls


def available_schedulers() -> list[str]:
    """Names accepted by :func:`get_scheduler`."""
    names = set(BUILTIN)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def get_scheduler(scheduler: str | type[Scheduler]) -> type[Scheduler]:
    """The Scheduler class for a name or a class.

    Raises:
        ConfigError: the name is unknown (the message lists the known ones),
            or the class is not a Scheduler.
    """
    from ..scheduler import Scheduler

    if isinstance(scheduler, type):
        if not issubclass(scheduler, Scheduler):
            raise ConfigError(f"{scheduler!r} is not a Scheduler subclass")
        return scheduler
    if not isinstance(scheduler, str):
        raise ConfigError(
            f"scheduler must be a name or a Scheduler class, not {scheduler!r}"
        )
    name = scheduler.lower()
    if name in BUILTIN:
        return _load(BUILTIN[name])
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Scheduler)):
                raise ConfigError(
                    f"entry point {ep.name!r} ({ep.value}) is not a Scheduler subclass"
                )
            return cls
    known = ", ".join(available_schedulers())
    raise ConfigError(f"unknown scheduler {scheduler!r}; known schedulers: {known}")
