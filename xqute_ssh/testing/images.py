"""Test host images: what each is, and building it where it is missing.

An image is ``xqute-ssh-test:<server>-<suite>[-nobash]``, built from the
Dockerfile next to this module (package data) on ``debian:<suite>-slim``.
Where no registry is reachable the base is made with ``debootstrap`` and
``docker import``; the debootstrap tarball is kept in the cache directory
(``XQUTE_SSH_IMAGE_CACHE``, default /var/cache/xqute-ssh) so a later run,
or a fresh dockerd, only imports it.  An image is rebuilt only when it is
missing or was built from another version of the Dockerfile / xq-host.

``python -m xqute_ssh.testing.images [NAME ...]`` builds the given images
(default: the matrix and the no-bash host) and prints how long each took.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ._docker import DockerError, docker, docker_bin
from ._util import HarnessError, SshdUnavailable

REPO = "xqute-ssh-test"
RECIPE_DIR = Path(__file__).with_name("containers")
RECIPE_LABEL = "org.xqute-ssh.recipe"
SERVERS = ("openssh", "dropbear")
SUITES = ("bullseye", "bookworm", "trixie")
#: The servers the matrix tests run on, and the host without bash.
MATRIX = ("openssh-bullseye", "openssh-bookworm", "openssh-trixie", "dropbear-bookworm")
NOBASH = "openssh-bookworm-nobash"
MIRROR = "http://deb.debian.org/debian"

_locks: dict[str, threading.Lock] = {}  # one build per image (and base) at a time
_locks_lock = threading.Lock()


def _lock_for(ref: str) -> threading.Lock:
    with _locks_lock:
        return _locks.setdefault(ref, threading.Lock())


def cache_dir() -> Path:
    return Path(os.environ.get("XQUTE_SSH_IMAGE_CACHE", "/var/cache/xqute-ssh"))


@dataclass(frozen=True)
class HostImage:
    """Which SSH server on which Debian suite, with or without bash."""

    server: str = "openssh"
    suite: str = "bookworm"
    bash: bool = True

    @classmethod
    def parse(cls, name: str) -> HostImage:
        """``openssh-bookworm``, ``dropbear-bookworm``, ``openssh-bookworm-nobash``..."""
        parts = name.split("-")
        bash = True
        if parts and parts[-1] == "nobash":
            bash = False
            parts = parts[:-1]
        if len(parts) != 2 or parts[0] not in SERVERS or parts[1] not in SUITES:
            raise HarnessError(
                f"unknown container image {name!r}: use <server>-<suite>[-nobash] with "
                f"server in {SERVERS} and suite in {SUITES}, e.g. 'openssh-bookworm'"
            )
        return cls(parts[0], parts[1], bash)

    @property
    def name(self) -> str:
        return f"{self.server}-{self.suite}" + ("" if self.bash else "-nobash")

    @property
    def tag(self) -> str:
        return f"{REPO}:{self.name}"

    @property
    def base(self) -> str:
        return f"debian:{self.suite}-slim"


def recipe_digest() -> str:
    """Hash of what goes into every image (Dockerfile and xq-host)."""
    h = hashlib.sha256()
    for name in ("Dockerfile", "xq-host"):
        h.update((RECIPE_DIR / name).read_bytes())
    return h.hexdigest()[:16]


def _label(ref: str, label: str) -> str | None:
    """The image's label value ('' if unset), or None if the image is missing."""
    done = docker(
        ["image", "inspect", "--format", f'{{{{index .Config.Labels "{label}"}}}}', ref],
        check=False,
    )
    return done.stdout.strip() if done.returncode == 0 else None


def ensure_image(image: HostImage) -> str:
    """The image's tag, built first if missing or stale (may take a minute)."""
    with _lock_for(image.tag):
        digest = recipe_digest()
        if _label(image.tag, RECIPE_LABEL) == digest:
            return image.tag
        ensure_base(image.suite)
        args = ["build", "-q", "--network", "host", "-t", image.tag]
        args += ["--label", f"{RECIPE_LABEL}={digest}"]
        args += ["--build-arg", f"BASE={image.base}", "--build-arg", f"SERVER={image.server}"]
        args += ["--build-arg", f"BASH={'yes' if image.bash else 'no'}", str(RECIPE_DIR)]
        try:
            docker(args, timeout=900)
        except DockerError as exc:
            raise SshdUnavailable(f"cannot build {image.tag}: {exc}") from None
        return image.tag


def ensure_base(suite: str) -> None:
    """Make ``debian:<suite>-slim`` exist: import the cached debootstrap
    tarball, debootstrapping it first if there is none.  Where debootstrap is
    missing, ``docker build`` pulls the base from a registry instead."""
    ref = f"debian:{suite}-slim"
    with _lock_for(ref):
        if _label(ref, RECIPE_LABEL) is None:
            _make_base(suite, ref)


def _make_base(suite: str, ref: str) -> None:
    tarball = cache_dir() / f"debian-{suite}-minbase.tar"
    if not tarball.exists():
        if shutil.which("debootstrap") is None or os.geteuid() != 0:
            return  # let docker build pull it
        _debootstrap(suite, tarball)
    with open(tarball, "rb") as fh:
        done = subprocess.run(
            [docker_bin(), "import", "-", ref],
            stdin=fh,
            capture_output=True,
            text=True,
            timeout=600,
        )
    if done.returncode != 0:
        raise SshdUnavailable(f"cannot import {tarball} as {ref}: {done.stderr.strip()}")


def _debootstrap(suite: str, tarball: Path) -> None:
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"xq-rootfs-{suite}-") as root:
        done = subprocess.run(
            ["debootstrap", "--variant=minbase", suite, root, MIRROR],
            capture_output=True,
            text=True,
            timeout=1200,
        )
        if done.returncode != 0:
            tail = "\n".join(done.stdout.splitlines()[-5:] + done.stderr.splitlines()[-5:])
            raise SshdUnavailable(f"debootstrap {suite} failed:\n{tail}")
        partial = tarball.with_suffix(".partial")
        with open(partial, "wb") as fh:
            subprocess.run(["tar", "-C", root, "-c", "."], stdout=fh, check=True, timeout=600)
        partial.replace(tarball)  # a run killed mid-way leaves no half tarball


def main(argv: list[str]) -> int:
    """Build the named images (default: all the tests use), bases first;
    independent steps run in parallel, as they mostly wait on the network."""
    try:
        images = [HostImage.parse(n) for n in (argv or [*MATRIX, NOBASH])]
    except HarnessError as exc:
        print(exc, file=sys.stderr)
        return 2
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        try:
            list(pool.map(ensure_base, sorted({i.suite for i in images})))
            print(f"base images ready in {time.monotonic() - t0:.1f} s", flush=True)
            for tag in pool.map(ensure_image, images):
                print(f"{tag} ready at {time.monotonic() - t0:.1f} s", flush=True)
        except HarnessError as exc:
            print(exc, file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
