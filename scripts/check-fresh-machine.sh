#!/usr/bin/env bash
# Run the README's set-up commands, character for character, in a fresh Debian
# root (debootstrap: python3 and git, no pip, no venv module, no `python`) holding
# a clean clone of this repository's committed HEAD, as a new user would.
#
# The commands are the ```sh lines after the `<!-- fresh-machine: NAME -->`
# markers in README.md; docs/quickstart.md's are checked equal to them by
# tests/test_readme.py.  usage: check-fresh-machine.sh [NAME...] (default: all)
# Needs root and debootstrap (installed with apt-get when missing) and the
# shared tools beside the clone (../shared/tools/fresh-machine.sh).  Outside
# CI, a machine that cannot run it skips with the reason; in CI that fails.
set -euo pipefail
cd "$(dirname "$0")/.."

skip() {
    if [ -n "${CI:-}" ]; then
        echo "check-fresh-machine: cannot run in CI: $1" >&2
        exit 1
    fi
    echo "check-fresh-machine: SKIPPED: $1"
    exit 0
}

tool=""
for cand in "${FRESH_MACHINE:-}" ../shared/tools/fresh-machine.sh /work/shared/tools/fresh-machine.sh; do
    if [ -n "$cand" ] && [ -f "$cand" ]; then tool=$cand; break; fi
done
[ -n "$tool" ] || skip "fresh-machine.sh not found (set FRESH_MACHINE=PATH)"
[ "$(id -u)" = 0 ] || skip "needs root (chroot, mounts)"
if ! command -v debootstrap >/dev/null; then
    apt-get install -y -qq debootstrap >/dev/null 2>&1 || skip "debootstrap unavailable (apt-get install debootstrap)"
fi
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
    echo "check-fresh-machine: note: uncommitted changes are not in the clone it tests" >&2
fi

commands() {  # NAME<TAB>COMMAND for each marked block of README.md
    awk '/^<!-- fresh-machine: [a-z-]+ -->$/ { name = $3; getline; getline; print name "\t" $0 }' README.md
}

names=("$@")
[ ${#names[@]} -gt 0 ] || mapfile -t names < <(commands | cut -f1)
[ ${#names[@]} -gt 0 ] || { echo "check-fresh-machine: no marked commands in README.md" >&2; exit 1; }
for name in "${names[@]}"; do
    cmd=$(commands | awk -F'\t' -v n="$name" '$1 == n { print $2 }')
    [ -n "$cmd" ] || { echo "check-fresh-machine: README.md has no command named $name" >&2; exit 1; }
    echo "== fresh machine: $name: $cmd"
    start=$(date +%s)
    log=$(mktemp)
    set +e
    bash "$tool" . "$cmd" 2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
    set -e
    # Tests inside may leave mounts (ip netns binds /run/netns) that keep
    # fresh-machine.sh from removing its root: unmount them, remove the root.
    root=$(sed -n 's/^fresh root: //p' "$log" | head -1)
    rm -f "$log"
    if [ -n "$root" ] && [ -d "$root" ] && [ -z "${KEEP:-}" ]; then
        grep -o " $root/[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m" || true; done
        grep -q " $root/" /proc/mounts || rm -rf "$root"
    fi
    if [ "$status" != 0 ]; then
        echo "check-fresh-machine: the README's $name command failed on a fresh machine" >&2
        exit 1
    fi
    echo "== fresh machine: $name passed in $(( $(date +%s) - start ))s"
done
