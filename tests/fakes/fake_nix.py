"""A fake ``nix`` for builder tests: parses ``nix build --out-link OUT REF`` like the
real one and "builds" the three image artifacts from the flake's folder.

Behaviour per flake folder (files the test drops there): ``fail`` -> a nix-style
error and exit 1; ``sleep`` (seconds) or ``$FAKE_NIX_SLEEP`` -> a slow build;
``noresult`` -> exit 0 without an out link. Every run appends ``PID REF`` to
``$FAKE_NIX_LOG`` and, with ``$FAKE_NIX_PIDS``, leaves its pid there so tests can
prove a cancelled build's process is gone."""

from __future__ import annotations

from pathlib import Path

FAKE_NIX = r"""#!/bin/sh
out=""; ref=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out-link) out="$2"; shift 2;;
    --extra-experimental-features) shift 2;;
    build|--print-build-logs) shift;;
    *) ref="$1"; shift;;
  esac
done
dir="${ref#path:}"; dir="${dir%%#*}"; attr="${ref##*#}"
echo "$$ $ref" >> "$FAKE_NIX_LOG"
[ -n "$FAKE_NIX_PIDS" ] && echo $$ > "$FAKE_NIX_PIDS/$$"
echo "building '/nix/store/fake-$attr.drv'..."
if [ -f "$dir/fail" ]; then
  echo "error: builder for '/nix/store/fake-$attr.drv' failed with exit code 2" >&2; exit 1
fi
sleep "${FAKE_NIX_SLEEP:-0}"
[ -f "$dir/sleep" ] && sleep "$(cat "$dir/sleep")"
[ -f "$dir/noresult" ] && exit 0
store="$FAKE_NIX_STORE/$$-$attr"; mkdir -p "$store"
printf 'kernel %s\n' "$attr" > "$store/vmlinux"
cat "$dir/flake.nix" > "$store/rootfs.ext4"
printf '{"name": "%s", "sealed": false}\n' "$attr" > "$store/mvm-meta.json"
ln -sfn "$store" "$out"
echo "done $attr"
"""


def write_fake_nix(folder: Path) -> Path:
    nix = folder / "fake-nix"
    nix.write_text(FAKE_NIX)
    nix.chmod(0o755)
    return nix
