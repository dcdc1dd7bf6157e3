"""What wakes the poller between two poll cycles, and how much it should do.

Two kinds of news: "something changed, look at everything" (a local job
exited, a stop was asked for, a submission went out) and "job N says it
ended" (an end event from a host, see schedulers/ssh/events.py).  The second
kind comes once per job, hundreds per second under load; a full poll cycle
for each would read every running job's files again, so such hints collect
here and the poller reads just those jobs' files.

Under load a short job often ends before its submission has returned (the
launch reply is still on its way): its hint is *parked* until the job is
marked SUBMITTED, then given again, so the job is read at once rather than
at the next full cycle (up to a poll interval later).
"""

from __future__ import annotations

import asyncio
import builtins


class PollWakeup(asyncio.Event):
    """An Event that also says why it was set.

    ``set()`` asks for a full poll cycle (as a plain Event would; backends
    and xqute-style code call it).  ``hint(index)`` asks for job ``index``
    alone to be read now.  ``clear()`` forgets a full request, never hints:
    they stay until :meth:`take_hints`.
    """

    def __init__(self) -> None:
        super().__init__()
        #: A full cycle was asked for since the last clear().
        self.full = False
        self._hints: builtins.set[int] = builtins.set()
        self._parked: builtins.set[int] = builtins.set()

    def set(self) -> None:
        self.full = True
        super().set()

    def hint(self, index: int) -> None:
        """Job ``index`` ended, its wrapper says: read its files soon."""
        self._hints.add(index)
        super().set()

    def clear(self) -> None:
        self.full = False
        super().clear()

    def take_hints(self) -> builtins.set[int]:
        """The jobs hinted at since the last call."""
        hints, self._hints = self._hints, builtins.set()
        return hints

    def park(self, index: int) -> None:
        """Keep job ``index``'s hint until :meth:`submitted` (its submission
        has not returned yet, so it cannot be read as a running job)."""
        self._parked.add(index)

    def submitted(self, index: int) -> None:
        """Job ``index`` is SUBMITTED now: a hint parked for it counts again."""
        if index in self._parked:
            self._parked.discard(index)
            self.hint(index)
