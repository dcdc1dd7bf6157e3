"""Run xqute 2.2.1's own tests against xqute_ssh and count what passes.

    python scripts/xqute_suite/run.py [--min-pass 20] [--keep DIR] [--reference]

Downloads xqute's sdist from PyPI (``pip download --no-binary :all:``), takes
its ``tests/test_local_scheduler.py``, ``tests/test_timeout.py`` and
``tests/test_xqute.py``, and runs them with ``conftest.py`` from this
directory at the root: it only maps ``xqute.*`` module names to xqute_ssh's.
The tests run in a throwaway virtualenv that sees this Python's packages plus
``panpath`` (test_xqute.py imports it at the top; xqute_ssh does not need it).

Prints every test that did not pass with the first line of its error, then
``xqute-suite: N passed, M failed`` over the 27 tests that pass on xqute
2.2.1 itself (its two cloud-storage tests need a Google bucket and are left
out).  Exits 1 when fewer than ``--min-pass`` pass.  ``--reference`` runs the
same tests on xqute 2.2.1 itself instead (a venv with xqute installed, no
alias), to compare.  Every failure is explained in docs/coming-from.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import venv
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
VERSION = "2.2.1"
FILES = ("test_local_scheduler.py", "test_timeout.py", "test_xqute.py")
#: They need a Google Cloud Storage bucket (and fail on xqute itself without).
CLOUD_TESTS = (
    "tests/test_local_scheduler.py::test_with_cloud_workdir",
    "tests/test_xqute.py::test_xqute_cloud_workdir",
)
#: The 27 tests that pass on xqute 2.2.1 itself (measured with --reference).
EXPECTED = (
    "test_local_scheduler.py::test_scheduler",
    "test_local_scheduler.py::test_immediate_submission_failure",
    "test_local_scheduler.py::test_killing_running_jobs",
    "test_local_scheduler.py::test_cwd",
    "test_local_scheduler.py::test_job_fails_before_running_no_jid",
    "test_local_scheduler.py::test_job_fails_before_running_invalid_jid",
    "test_local_scheduler.py::test_job_fails_before_running_missing_status",
    "test_local_scheduler.py::test_job_fails_before_running_status_submitted",
    "test_local_scheduler.py::test_job_fails_before_running_status_running",
    "test_timeout.py::test_timeout_wrapper_script",
    "test_timeout.py::test_timeout_disabled_wrapper_script",
    "test_timeout.py::test_timeout_kills_long_running_job",
    "test_timeout.py::test_timeout_does_not_kill_fast_job",
    "test_xqute.py::test_main",
    "test_xqute.py::test_keep_feeding",
    "test_xqute.py::test_del_without_stop_feeding",
    "test_xqute.py::test_plugin",
    "test_xqute.py::test_not_init_in_loop",
    "test_xqute.py::test_shutdown",
    "test_xqute.py::test_cancel_shutdown",
    "test_xqute.py::test_job_failed_hook",
    "test_xqute.py::test_job_is_running",
    "test_xqute.py::test_job_set_rc_jid",
    "test_xqute.py::test_halt",
    "test_xqute.py::test_cancel_submitting",
    "test_xqute.py::test_plugin_context",
    "test_xqute.py::test_put_job_with_envs",
)
PYTEST_INI = """\
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
"""


def log(msg: str) -> None:
    print(f"xqute-suite: {msg}", flush=True)


def run(cmd: list[str], **kwargs: object) -> None:
    subprocess.run(cmd, check=True, **kwargs)  # type: ignore[call-overload]


def fetch_tests(version: str, dest: Path, sdist: Path | None) -> Path:
    """xqute's tests/ directory from its sdist, unpacked under ``dest``."""
    if sdist is None:
        dl = dest / "sdist"
        run(
            [
                sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:",
                "--no-deps", f"xqute=={version}", "-d", str(dl),
            ]
        )
        sdist = next(dl.glob("xqute-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if "/tests/" in m.name]
        tar.extractall(dest / "src", members=members, filter="data")
    (tests,) = (dest / "src").glob("xqute-*/tests")
    return tests


def make_venv(path: Path, reference: bool, version: str) -> Path:
    """A venv to run in; its python.

    Ours: sees this Python's packages (pytest, xqute_ssh's dependencies) and
    adds panpath.  Reference: a clean venv with xqute itself.
    """
    venv.EnvBuilder(system_site_packages=False, with_pip=True).create(path)
    python = path / "bin" / "python"
    if not reference:
        # This Python's own packages, by a .pth file: system_site_packages
        # would give the *base* interpreter's, and when this Python is itself
        # a venv (CI's .venv) xqute_ssh's dependencies are not there.
        ours = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
        site = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        Path(site, "xqute_ssh_parent.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    if reference:
        wanted = [f"xqute=={version}", "pytest", "pytest-asyncio", "python-dotenv"]
    else:
        wanted = ["panpath"]
    run([str(python), "-m", "pip", "install", "-q", *wanted])
    return python


def outcomes(report: Path) -> dict[str, tuple[str, str]]:
    """test id (file::name) -> (outcome, first line of the reason)."""
    out: dict[str, tuple[str, str]] = {}
    if not report.exists():
        return out
    for case in ET.parse(report).getroot().iter("testcase"):
        name = case.get("name", "")
        module = (case.get("classname") or "").rsplit(".", 1)[-1]
        key = f"{module}.py::{name}"
        outcome, reason = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = "failed" if tag != "skipped" else "skipped"
                text = node.get("message") or node.text or tag
                reason = text.strip().splitlines()[0][:160] if text.strip() else tag
                break
        if key in out and out[key][0] != "passed":
            continue  # a teardown error after a failure: keep the failure
        out[key] = (outcome, reason)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--version", default=VERSION, help="xqute version (default %(default)s)")
    ap.add_argument("--min-pass", type=int, default=20, help="fail below this many passes")
    ap.add_argument("--sdist", type=Path, help="use this xqute sdist instead of downloading")
    ap.add_argument("--keep", type=Path, help="work in this directory and keep it")
    ap.add_argument("--reference", action="store_true", help="run on xqute itself")
    ap.add_argument("--timeout", type=float, default=900, help="hang guard, seconds")
    args = ap.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="xqute-suite-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        tests_src = fetch_tests(args.version, work, args.sdist)
        rundir = work / "run"
        shutil.rmtree(rundir, ignore_errors=True)
        (rundir / "tests").mkdir(parents=True)
        for name in ("__init__.py", "conftest.py", *FILES):
            shutil.copy(tests_src / name, rundir / "tests" / name)
        if (tests_src / "mocks").is_dir():
            shutil.copytree(tests_src / "mocks", rundir / "tests" / "mocks")
        (rundir / "pytest.ini").write_text(PYTEST_INI)
        env = dict(os.environ)
        if not args.reference:
            shutil.copy(HERE / "conftest.py", rundir / "conftest.py")
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(REPO), env.get("PYTHONPATH", "")) if p
            )
        python = make_venv(work / "venv", args.reference, args.version)
        target = "xqute" if args.reference else "xqute_ssh"
        where = subprocess.run(
            [str(python), "-c", f"import {target}; print({target}.__file__)"],
            env=env, capture_output=True, text=True, check=True,
        ).stdout.strip()
        log(f"xqute {args.version}'s tests against {target} from {where}")
        report = rundir / "report.xml"
        cmd = [
            str(python), "-m", "pytest", "-p", "no:cacheprovider", "-q",
            "-o", "addopts=", f"--junitxml={report}",
            *(arg for t in CLOUD_TESTS for arg in ("--deselect", t)),
            *(f"tests/{f}" for f in FILES),
        ]
        try:
            subprocess.run(cmd, cwd=rundir, env=env, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            log(f"the tests did not end within {args.timeout:.0f} s (a hang)")
        results = outcomes(report)
        passed = [t for t in EXPECTED if results.get(t, ("",))[0] == "passed"]
        for test in EXPECTED:
            if test not in passed:
                outcome, reason = results.get(test, ("failed", "not run (collection error?)"))
                log(f"NOT PASSED {test} ({outcome}): {reason}")
        print(
            f"xqute-suite: {len(passed)} passed, {len(EXPECTED) - len(passed)} failed"
            f" (of the {len(EXPECTED)} that pass on xqute {VERSION} itself;"
            f" at least {args.min_pass} must pass)",
            flush=True,
        )
        return 0 if len(passed) >= args.min_pass else 1
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
