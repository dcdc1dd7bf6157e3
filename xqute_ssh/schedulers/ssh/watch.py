"""HostWatch: the I/O around :class:`~xqute_ssh.ssh.health.HostHealth`.

The bookkeeping decides; this module carries it out: it runs the background
probes the health asks for, turns what the connection pools and the jobs see
into health outcomes, logs one line per host going down or coming back, and
keeps ``WORKDIR/.xqute-hosts.json`` (read by ``xqute-ssh status``) current.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable

from ... import fileio
from ...errors import ConfigError, SshError
from ...path import SpecPath
from ...ssh.health import Change, HostHealth

logger = logging.getLogger("xqute_ssh")

#: In the workdir: each host's health, rewritten when a host goes down or
#: comes back (``xqute-ssh status`` shows the hosts that are down).
HEALTH_FILE = ".xqute-hosts.json"


class HostWatch:
    """Feeds a HostHealth and acts on its changes.

    Args:
        health: the bookkeeping (its ``labels`` name hosts in messages).
        probe: one probe of a host by name (a connect and a round trip);
            raising SshError or ConfigError means it failed.
        workdir: where the host file goes.
        on_change: called whenever a host's usability changed.
    """

    def __init__(
        self,
        health: HostHealth,
        probe: Callable[[str], Awaitable[None]],
        workdir: SpecPath,
        on_change: Callable[[], None],
    ) -> None:
        self.health = health
        self._probe_host = probe
        self._file = workdir / HEALTH_FILE
        self._on_change = on_change
        self._changed = asyncio.Event()
        self._prober: asyncio.Task[None] | None = None
        self._probes: set[asyncio.Task[None]] = set()
        self._writer: asyncio.Task[None] | None = None
        self._rewrite = False

    # ------------------------------------------------------------ outcomes
    def connected(self, name: str, exc: BaseException | None) -> None:
        """A pool's connect ended (None: it worked); the pool's callback."""
        if exc is None:
            self.succeeded(name)
        else:
            self.failed(name, exc)

    def succeeded(self, name: str) -> None:
        self._said(self.health.succeeded(name))

    def failed(self, name: str, exc: BaseException) -> None:
        """The host failed: permanently when retrying cannot help (auth,
        host key, a missing tool on the host, a bad option)."""
        permanent = isinstance(exc, ConfigError) or (
            isinstance(exc, SshError) and not exc.retryable
        )
        reason = str(exc)
        if isinstance(exc, SshError) and reason.startswith(exc.host + ": "):
            reason = reason[len(exc.host) + 2 :]  # the label says which host
        self._said(self.health.failed(name, reason, permanent=permanent))

    def _label(self, name: str) -> str:
        return self.health.labels.get(name, name)

    def _said(self, change: Change | None) -> None:
        """One line per host going down or coming back, never one per job."""
        if change is None:
            return
        label = self._label(change.name)
        if change.up and change.first:
            logger.debug("host %s is up", label)
        elif change.up:
            logger.warning("host %s is back: it takes jobs again", label)
        elif change.permanent:
            logger.warning(
                "host %s is unusable, it gets no jobs in this run: %s", label, change.reason
            )
        else:
            logger.warning(
                "host %s is down, it gets no jobs until it answers again "
                "(probed in the background, first in %gs): %s",
                label,
                self.health.cooldown,
                change.reason,
            )
        self._changed.set()
        self._on_change()
        self._to_disk()

    # ------------------------------------------------------------ probes
    def start(self) -> None:
        """Start probing (idempotent): first every host, then those down."""
        if self._prober is None or self._prober.done():
            self._prober = asyncio.get_running_loop().create_task(self._probe_loop())

    async def _probe_loop(self) -> None:
        while True:
            for name in self.health.due_probes():
                task = asyncio.get_running_loop().create_task(self._probe(name))
                self._probes.add(task)
                task.add_done_callback(self._probes.discard)
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.health.next_probe_in()):
                    await self._changed.wait()

    async def _probe(self, name: str) -> None:
        try:
            await self._probe_host(name)
        except asyncio.CancelledError:
            raise
        except (SshError, ConfigError) as exc:
            self.failed(name, exc)
        except Exception as exc:  # a bug: say so, and keep the host out
            logger.exception("%s: probe failed unexpectedly", self._label(name))
            self.failed(name, SshError(self._label(name), repr(exc)))
        else:
            self.succeeded(name)
        finally:
            self._changed.set()  # a failed re-probe changes the next due time

    # ------------------------------------------------------------ host file
    def _to_disk(self) -> None:
        """Rewrite the host file soon (one writer; the last state wins)."""
        self._rewrite = True
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        while self._rewrite:
            self._rewrite = False
            text = json.dumps(self.health.snapshot(time.time()), indent=1) + "\n"
            try:
                await fileio.write_text(self._file, text)
            except OSError as exc:
                logger.debug("cannot write %s: %s", self._file, exc)
                return

    async def close(self) -> None:
        """Stop probing (probes in flight are abandoned); flush the host file."""
        if self._prober is not None:
            self._prober.cancel()
        for task in list(self._probes):
            task.cancel()
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await self._writer
