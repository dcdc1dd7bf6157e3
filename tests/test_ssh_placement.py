"""SSH scheduler bookkeeping that needs no server: placement, options, jids."""

from __future__ import annotations

import pytest

from xqute_ssh import ConfigError
from xqute_ssh.schedulers.ssh import (
    HostSlots,
    Placement,
    parse_jid,
    parse_servers,
    remote,
)


def make(*forks: int) -> Placement:
    return Placement([HostSlots(f"h{i}", f) for i, f in enumerate(forks)])


def test_most_free_slots_wins_not_round_robin() -> None:
    p = make(4, 2)
    picks = [p.pick(i).name for i in range(6)]  # type: ignore[union-attr]
    # h0 has 4 slots, h1 has 2: h0 is picked while it has more free
    assert picks.count("h0") == 4 and picks.count("h1") == 2
    assert p.pick(99) is None  # all full


def test_release_frees_exactly_one_slot() -> None:
    p = make(1, 1)
    a = p.pick(0)
    b = p.pick(1)
    assert {a.name, b.name} == {"h0", "h1"}  # type: ignore[union-attr]
    p.release(a.name, 0, ok=True)  # type: ignore[union-attr]
    p.release(a.name, 0, ok=True)  # twice: no double free
    assert p.hosts[a.name].free == 1  # type: ignore[union-attr]
    assert p.hosts[a.name].finished == 1  # type: ignore[union-attr]
    assert p.pick(2).name == a.name  # type: ignore[union-attr]


def test_only_hosts_that_may_take_jobs_are_picked() -> None:
    p = make(2, 2)
    assert [p.pick(i, among={"h1"}).name for i in range(2)] == ["h1", "h1"]  # type: ignore[union-attr]
    assert p.pick(3, among={"h1"}) is None
    assert p.pick(3, among=set()) is None
    assert p.pick(3, among={"h0", "h1"}).name == "h0"  # type: ignore[union-attr]


def test_retry_prefers_another_host() -> None:
    p = make(2, 2)
    assert p.pick(0, avoid={"h0"}).name == "h1"  # type: ignore[union-attr]
    assert p.pick(1, avoid={"h1"}).name == "h0"  # type: ignore[union-attr]
    # only avoided hosts have room: still placed
    p.pick(2)
    assert p.pick(3, avoid={"h0", "h1"}) is not None


def test_parse_jid() -> None:
    assert parse_jid("node1:123:456") == ("node1", 123, 456)
    assert parse_jid("user@h:22:7:8") == ("user@h:22", 7, 8)
    assert parse_jid("123") is None
    assert parse_jid(None) is None


def test_servers_list_and_mapping(tmp_path) -> None:
    key = tmp_path / "k"
    key.write_text("x")
    key.chmod(0o600)
    specs = parse_servers(["alice@n1:2222", "n2"], {"keyfile": str(key)})
    assert [s.config.label for s in specs] == ["alice@n1:2222", specs[1].config.label]
    assert specs[1].config.host == "n2" and specs[1].config.keyfile == str(key)
    specs = parse_servers({"a": {"host": "10.0.0.5", "forks": 3}, "b.example": None}, {})
    assert specs[0].config.host == "10.0.0.5" and specs[0].forks == 3
    assert specs[1].config.host == "b.example"


@pytest.mark.parametrize(
    "servers, match",
    [
        (None, "needs servers"),
        ([], "needs servers"),
        ("node1", "list or a mapping"),
        (["bob@:22"], "invalid host entry"),
        (["h:0"], "outside 1..65535"),
        (["h:abc"], "port must be an integer"),
        ({"a": {"prot": 22}}, "'prot' \\(did you mean 'port'\\?\\)"),
        ({"a": {"forks": -1}}, "forks"),
        ({"a": {"shared_fs": "yes"}}, "shared_fs"),
    ],
)
def test_bad_servers_named(servers, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_servers(servers, {})


def test_launch_reply_parsing() -> None:
    assert remote.parse_launch("junk\nxq-started 12 345\n") == remote.Launched(12, 345)
    assert remote.parse_launch("xq-error noscript\n") == "noscript"
    assert remote.parse_launch("") == "no reply"


def test_snippets_quote_paths_once() -> None:
    snippet = remote.launch("/w d/$(x)/s", "/o'1", "/e`2`")
    assert "'/w d/$(x)/s'" in snippet
    assert "'/o'\"'\"'1'" in snippet
    assert "'/e`2`'" in snippet


def _sh(snippet: str) -> str:
    import subprocess

    out = subprocess.run(["sh", "-c", snippet], capture_output=True, text=True, timeout=30)
    return out.stdout


def test_snippets_run_in_a_real_posix_shell(tmp_path) -> None:
    """launch / dead_among / kill_group against dash, as a host runs them."""
    import time

    script = tmp_path / "job with space.sh"
    script.write_text("sleep 30\n")
    reply = _sh(remote.launch(str(script), str(tmp_path / "out"), str(tmp_path / "err")))
    launched = remote.parse_launch(reply)
    assert isinstance(launched, remote.Launched), reply
    assert launched.starttime > 0
    alive = (launched.pid, launched.starttime)
    assert remote.parse_pids(_sh(remote.dead_among([alive]))) == set()
    # same pid, other start time: a reused pid is not our job
    reused = (launched.pid, launched.starttime + 1)
    assert remote.parse_pids(_sh(remote.dead_among([reused]))) == {launched.pid}
    assert "xq-killing" in _sh(remote.kill_group(launched.pid, launched.starttime, 1))
    deadline = time.monotonic() + 10
    while "alive" in _sh(remote.group_alive(launched.pid)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert remote.parse_pids(_sh(remote.dead_among([alive]))) == {launched.pid}
    assert "xq-gone" in _sh(remote.kill_group(launched.pid, launched.starttime, 1))
    assert remote.parse_launch(_sh(remote.launch(str(tmp_path / "nope"), "/dev/null", "/dev/null"))) == "noscript"


def test_idle_hosts_share_sequential_jobs() -> None:
    p = make(8, 8)
    names = []
    for i in range(10):
        host = p.pick(i)
        names.append(host.name)  # type: ignore[union-attr]
        p.release(host.name, i, ok=True)  # type: ignore[union-attr]
    assert names.count("h0") == names.count("h1") == 5
