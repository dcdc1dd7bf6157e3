"""Run tests/pipen/pipeline.py in its own process and read what it recorded."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def require_pipen() -> None:
    """Call at module level: skip (with the reason) without pipen; under CI
    (``CI`` set) fail instead, since CI installs the extra."""
    if importlib.util.find_spec("pipen") is not None:
        return
    reason = "pipen is not installed: pip install -e '.[pipen]' to run these tests"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: they may not be skipped)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require_entry_points(*wanted: str) -> None:
    """Fail (not skip) when pipen cannot find our schedulers by name."""
    names = {ep.name for ep in entry_points(group="pipen_sched")}
    missing = set(wanted or ("xqute_ssh", "xqute_ssh_local")) - names
    if missing:
        pytest.fail(
            f"pipen cannot find the scheduler(s) {sorted(missing)}: the package's "
            "entry points are not installed; run pip install -e '.[pipen]'",
            pytrace=False,
        )


@dataclass
class Run:
    returncode: int
    record: dict[str, Any]
    log: str
    outdir: Path
    workdir: Path

    def events(self, kind: str, proc: str = "P1") -> list[list[Any]]:
        return [e for e in self.record.get("events", []) if e[0] == kind and e[1] == proc]

    def metadir(self, proc: str, index: int) -> Path:
        return self.workdir / "xqtest" / proc / str(index)


def config(tmp_path: Path, scenario: str, scheduler: str, **extra: Any) -> dict[str, Any]:
    marks = tmp_path / "marks"
    marks.mkdir(parents=True, exist_ok=True)
    return {
        "scenario": scenario,
        "scheduler": scheduler,
        "outdir": str(extra.pop("outdir", tmp_path / "out")),
        "workdir": str(extra.pop("workdir", tmp_path / "work")),
        "marks": str(marks),
        "result": str(tmp_path / f"result-{scenario}.json"),
        **extra,
    }


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), out.get("PYTHONPATH", "")) if p
    )
    out.setdefault("PYTHONWARNINGS", "ignore")
    return out


def start(cfg: dict[str, Any], tag: str = "") -> tuple[subprocess.Popen[str], Path]:
    path = Path(cfg["result"]).with_name(f"config-{cfg['scenario']}{tag}.json")
    path.write_text(json.dumps(cfg))
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "pipeline.py"), str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env(),
        cwd=str(Path(cfg["marks"]).parent),
    )
    return proc, path


def finish(proc: subprocess.Popen[str], cfg: dict[str, Any], timeout: float = 240) -> Run:
    try:
        log, _ = proc.communicate(timeout=timeout)  # hang guard only
    except subprocess.TimeoutExpired:
        proc.kill()
        log, _ = proc.communicate()
        pytest.fail(f"the pipeline hung; its log:\n{log[-int(os.environ.get('XQ_TAIL', 5000)):]}")
    result = Path(cfg["result"])
    record = json.loads(result.read_text()) if result.exists() else {}
    result.unlink(missing_ok=True)
    return Run(proc.returncode, record, log, Path(cfg["outdir"]), Path(cfg["workdir"]))


def run(cfg: dict[str, Any], timeout: float = 240, tag: str = "") -> Run:
    proc, _ = start(cfg, tag)
    return finish(proc, cfg, timeout)
