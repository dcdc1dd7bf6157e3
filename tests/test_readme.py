"""The README's set-up commands: findable by the CI check, and the docs agree.

``scripts/check-fresh-machine.sh`` runs the marked commands in a fresh Debian
root (its own CI step, slow); these fast checks keep the markers it relies on
and keep docs/quickstart.md from drifting from the README.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^<!-- fresh-machine: ([a-z-]+) -->\n```sh\n(.+)\n```$", re.M)


def readme_commands() -> dict[str, str]:
    return dict(MARKER.findall((ROOT / "README.md").read_text()))


def test_readme_marks_a_demo_and_a_tests_command() -> None:
    cmds = readme_commands()
    assert set(cmds) == {"demo", "tests"}
    # A fresh Debian has neither `python` nor pip: the commands must not use them bare.
    for cmd in cmds.values():
        assert not re.search(r"(^|&& )(python|pip) ", cmd), cmd
        assert "python3-venv" in cmd
    # The demo needs only the runtime dependencies, not the test extra.
    assert "[test]" not in cmds["demo"] and "setup-tests" not in cmds["demo"]
    assert cmds["tests"].endswith("-m pytest")


def test_quickstart_shows_the_readme_demo_command() -> None:
    quickstart = (ROOT / "docs" / "quickstart.md").read_text()
    assert readme_commands()["demo"] in quickstart
    assert "pip install -e ." not in quickstart.split("```python")[0]
