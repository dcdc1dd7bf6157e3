"""LaunchBatcher: launches to one host go out in batches (no network here)."""

from __future__ import annotations

import asyncio

import pytest

from xqute_ssh.errors import SshConnectionLost
from xqute_ssh.schedulers.ssh.launcher import (
    LaunchBatcher,
    collect_output,
    join_parts,
    split_reply,
)
from xqute_ssh.ssh import CommandResult


def test_a_batch_reply_cuts_at_numbered_separators_only() -> None:
    text = "xq-started 1 5\nxq-next 0\nxq-next 7\nxq-started 2 6\nxq-next 1\n"
    assert split_reply(text, 3) == ["xq-started 1 5\n", "xq-next 7\nxq-started 2 6\n", ""]
    assert split_reply(text, 2) is None  # a separator too many or too few: no guess
    assert split_reply("a\nxq-next 1\nb\n", 2) is None  # out of order
    assert join_parts(["a", "b", "c"]) == "a\necho 'xq-next 0'\nb\necho 'xq-next 1'\nc"


def test_a_collected_batch_prints_its_parts_in_one_write_as_sh_runs_it(tmp_path) -> None:
    """Under real ``sh``: the same reply as the parts printed one by one,
    in a single write (one SSH packet per batch, not one per job)."""
    import shlex
    import shutil
    import subprocess

    from xqute_ssh.schedulers.ssh import remote

    scripts = []
    for i in range(3):
        script = tmp_path / f"s{i}.sh"
        script.write_text("echo hi\n")
        scripts.append(str(script))
    snippets = [
        remote.launch(s, str(tmp_path / f"o{i}"), str(tmp_path / f"e{i}"))
        for i, s in enumerate(scripts)
    ] + [remote.launch(str(tmp_path / "missing.sh"), "/dev/null", "/dev/null")]
    batch = collect_output(join_parts(snippets))
    # the way the control session frames a launch (ssh/control.py)
    frame = f"( eval {shlex.quote(batch)} ) </dev/null 2>&1"
    out = subprocess.run(["sh", "-c", frame], capture_output=True, text=True, timeout=30)
    pieces = split_reply(out.stdout, 4)
    assert pieces is not None, out
    assert [remote.parse_launch(p) for p in pieces][-1] == "noscript"
    assert all(not isinstance(remote.parse_launch(p), str) for p in pieces[:3])
    if shutil.which("strace"):
        trace = tmp_path / "trace"
        traced = subprocess.run(
            ["strace", "-f", "-e", "trace=write", "-o", str(trace), "sh", "-c", frame],
            capture_output=True, timeout=30, check=True,
        )
        whole = len(traced.stdout)
        writes = [ln for ln in trace.read_text().splitlines() if " write(1, " in ln]
        # the parts wrote into the capture; the reply left in one write
        assert any(ln.endswith(f"= {whole}") for ln in writes), writes


class FakeHost:
    """Runs joined snippets like sh would: each part prints its own line."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.release = asyncio.Event()
        self.fail: Exception | None = None

    async def run(self, snippet: str) -> CommandResult:
        self.requests.append(snippet)
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        out = []
        lines = snippet.split("\n")
        if lines[0] == "xq_o=$( {":  # collect_output(): the parts are inside
            lines = lines[1:-1]
        for line in lines:
            if line.startswith("echo 'xq-next "):
                out.append(line[6:-1] + "\n")
            else:
                out.append(f"did {line}\n")
        return CommandResult(0, "".join(out), "")


async def test_launches_ready_while_one_is_in_flight_go_out_together() -> None:
    host = FakeHost()
    b = LaunchBatcher(host.run, "h")
    first = b.submit("job0")
    await asyncio.sleep(0)
    rest = [b.submit(f"job{i}") for i in range(1, 5)]
    assert len(host.requests) == 1 and b.waiting == 4
    host.release.set()
    results = await asyncio.gather(first.future, *(p.future for p in rest))
    assert [r.stdout for r in results] == [f"did job{i}\n" for i in range(5)]
    assert len(host.requests) == 2  # one alone, then the four that waited
    assert "<LaunchBatcher h [idle, 0 waiting]>" == repr(b)


async def test_a_launch_not_sent_yet_can_be_withdrawn_and_never_runs() -> None:
    host = FakeHost()
    b = LaunchBatcher(host.run, "h")
    b.submit("job0")
    await asyncio.sleep(0)
    waiting = b.submit("job1")
    assert b.withdraw(waiting) and waiting.future.cancelled()
    host.release.set()
    await asyncio.sleep(0.01)
    assert not any("job1" in r for r in host.requests)


async def test_a_failed_batch_fails_each_launch_with_its_own_error() -> None:
    host = FakeHost()
    b = LaunchBatcher(host.run, "h")
    b.submit("job0")
    await asyncio.sleep(0)
    parts = [b.submit(f"job{i}") for i in range(1, 3)]
    host.fail = SshConnectionLost("h", "gone")
    host.release.set()
    errors = []
    for p in parts:
        with pytest.raises(SshConnectionLost) as info:
            await p.future
        errors.append(info.value)
    assert errors[0] is not errors[1] and errors[0].retryable
