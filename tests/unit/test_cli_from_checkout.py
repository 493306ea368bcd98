"""mvmctl run from the repository root, as the README's quick start does.

There ``./mvm`` holds only part of the package (engine/, actors/ and backends/
sit beside it and are mapped in at install time), so a child started with
``python -m`` would import the sources instead of the installed package unless
it keeps the cwd off ``sys.path``. CI installs the package non-editable, which
is where this fails if a spawn forgets it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MVMCTL = Path(sys.executable).with_name("mvmctl")


def _stub_image(root: Path) -> Path:
    image = root / "image"
    image.mkdir()
    for name in ("vmlinux", "rootfs.ext4"):
        (image / name).write_bytes(b"stub")
    (image / "mvm-meta.json").write_text(json.dumps({"name": "stub", "sealed": False}))
    return image


def _mvmctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MVMCTL), *args], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )


def test_detached_up_and_down_from_the_repository_root(tmp_path: Path) -> None:
    image = _stub_image(tmp_path)
    up = _mvmctl("up", str(image), "--name", "fromrepo", "--backend", "stub")
    try:
        assert up.returncode == 0, up.stderr
        (row,) = json.loads(_mvmctl("ls", "--json").stdout)
        assert row["name"] == "fromrepo" and row["state"] == "running", row
    finally:
        down = _mvmctl("down", "fromrepo")
    assert down.returncode == 0, down.stderr
