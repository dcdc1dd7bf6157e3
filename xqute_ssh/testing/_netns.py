"""Network namespaces with a veth pair: test hosts whose network can be cut.

Each host gets ``ip netns`` ``xqt-<token>-<n>`` and a veth pair: the controller
side (``xq<token>h<n>``) stays in our namespace with ``10.213.X.1/30``, the
other end is ``eth0`` inside the host's namespace with ``10.213.X.2/30``.
Those addresses exist only on links this module creates, so test traffic never
reaches any real network.  The /30 blocks are chosen under a lock file from the
ones not already configured here, so concurrent clusters (pytest-xdist, other
test runs) never collide.  Each cluster leaves an owner file (pid and start
time) next to the lock; namespaces whose owner died without cleaning up (a
SIGKILLed pytest) are removed by the next cluster that allocates.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ._reaper import read_proc

log = logging.getLogger("xqute_ssh.testing")

POOL = ipaddress.IPv4Network("10.213.0.0/16")
STATE_DIR = Path("/run/xqute-ssh-netns")  # the lock and one owner file per cluster
NS_IFACE = "eth0"


class NetnsError(RuntimeError):
    """An ``ip`` command failed (the harness turns it into SshdUnavailable)."""


def ip(*args: str, check: bool = True) -> str:
    """Run ``ip ARGS`` and return stdout; NetnsError with stderr on failure."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@dataclass
class VethLink:
    """One host's namespace and the veth pair that is its only network."""

    netns: str
    veth: str
    controller_addr: str
    host_addr: str

    def create(self) -> None:
        """Make the namespace, the veth pair, the addresses; bring links up."""
        ip("netns", "add", self.netns)
        ip("link", "add", self.veth, "type", "veth", "peer", "name", NS_IFACE, "netns", self.netns)
        ip("addr", "add", f"{self.controller_addr}/30", "dev", self.veth)
        ip("link", "set", self.veth, "up")
        ip("-n", self.netns, "addr", "add", f"{self.host_addr}/30", "dev", NS_IFACE)
        ip("-n", self.netns, "link", "set", "lo", "up")
        ip("-n", self.netns, "link", "set", NS_IFACE, "up")
        self.wait_up()

    def cut(self) -> None:
        """Drop every packet between controller and host, silently.

        The HOST side goes down, not ours: taking our side down would delete
        the /30 route, and packets for the host would then follow the default
        route out to the real network.  With the far end down, our side only
        loses carrier; the route stays (``linkdown``) and packets die in the
        veth.  We check that before returning.
        """
        ip("-n", self.netns, "link", "set", NS_IFACE, "down")
        route = ip("route", "get", self.host_addr)
        if f"dev {self.veth}" not in route:
            self.restore()
            raise NetnsError(f"after the cut, {self.host_addr} routes elsewhere: {route!r}")

    def restore(self) -> None:
        """Bring the link back and wait until both ends pass traffic."""
        ip("-n", self.netns, "link", "set", NS_IFACE, "up")
        self.wait_up()

    def wait_up(self, timeout: float = 5.0) -> None:
        """Wait for both ends to be operationally up.

        The kernel activates a link's queue a moment after it comes up (link
        watch); packets sent before that are dropped, which would cost the
        first connection a 1 s SYN retransmit.
        """
        deadline = time.monotonic() + timeout
        while True:
            ours = ip("-o", "link", "show", "dev", self.veth)
            theirs = ip("-n", self.netns, "-o", "link", "show", "dev", NS_IFACE)
            if "state UP" in ours and "state UP" in theirs:
                return
            if time.monotonic() > deadline:
                raise NetnsError(f"{self.veth} did not come up: {ours.strip()} / {theirs.strip()}")
            time.sleep(0.005)

    def delete(self) -> None:
        """Remove the veth pair and the namespace; ignore what is already gone."""
        ip("link", "del", self.veth, check=False)
        ip("netns", "del", self.netns, check=False)


def create_links(token: str, count: int) -> list[VethLink]:
    """Allocate ``count`` free /30 blocks and create one VethLink on each.

    Holding the lock from "which blocks are free" until "addresses assigned"
    is what keeps two clusters from picking the same block.
    """
    links: list[VethLink] = []
    STATE_DIR.mkdir(mode=0o755, exist_ok=True)
    with open(STATE_DIR / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            _sweep_stale()
            me = read_proc(os.getpid())
            (STATE_DIR / f"{token}.owner").write_text(f"{os.getpid()} {me.starttime if me else 0}")
            used = _used_blocks()
            blocks = (b for b in POOL.subnets(new_prefix=30) if b not in used)
            for n in range(1, count + 1):
                block = next(blocks, None)
                if block is None:
                    raise NetnsError(f"no free /30 left in {POOL}")
                link = VethLink(
                    netns=f"xqt-{token}-{n}",
                    veth=f"xq{token}h{n}",
                    controller_addr=str(block[1]),
                    host_addr=str(block[2]),
                )
                links.append(link)
                link.create()
                log.debug("netns %s: %s <-> %s", link.netns, link.controller_addr, link.host_addr)
        except BaseException:
            delete_links(token, links)
            raise
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return links


def delete_links(token: str, links: list[VethLink]) -> None:
    """Remove a cluster's links and its owner file; never raises."""
    for link in links:
        with contextlib.suppress(Exception):
            link.delete()
    with contextlib.suppress(OSError):
        (STATE_DIR / f"{token}.owner").unlink()


def _sweep_stale() -> None:
    """Delete namespaces and veths of clusters whose process has died."""
    for owner in STATE_DIR.glob("*.owner"):
        try:
            pid, start = map(int, owner.read_text().split())
        except (OSError, ValueError):
            continue
        proc = read_proc(pid)
        if proc is not None and proc.starttime == start:
            continue  # still running
        token = owner.name.removesuffix(".owner")
        named = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
        netns = [n for n in named if n.startswith(f"xqt-{token}-")]
        veths = [v for v in os.listdir("/sys/class/net") if v.startswith(f"xq{token}h")]
        log.debug("removing stale netns of dead pid %d: %s %s", pid, netns, veths)
        for v in veths:
            ip("link", "del", v, check=False)
        for n in netns:
            ip("netns", "del", n, check=False)
        owner.unlink(missing_ok=True)


def _used_blocks() -> set[ipaddress.IPv4Network]:
    used = set()
    for line in ip("-o", "-4", "addr", "show").splitlines():
        words = line.split()
        if "inet" in words:
            iface = ipaddress.IPv4Interface(words[words.index("inet") + 1])
            if iface.ip in POOL:
                used.add(ipaddress.IPv4Network(f"{iface.ip}/30", strict=False))
    return used
