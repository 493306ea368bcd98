"""The README's project example: examples/web (flake.nix + mvm.toml) builds and boots.

Without a Nix store the build goes through the auto builder's offline fallback,
which must say why it chose it; the dev VM then serves the flake's page on the
port mvm.toml publishes, and `dev down` leaves no VMM behind."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import pytest

from .conftest import qemu_pids
from .test_cli import _fetch, mvmctl

pytestmark = pytest.mark.qemu

WEB = Path(__file__).resolve().parents[2] / "examples" / "web"


def test_web_example_validates_builds_and_serves_in_dev_mode() -> None:
    assert mvmctl("validate", str(WEB / "mvm.toml")).returncode == 0
    built = mvmctl("build", str(WEB))
    assert built.returncode == 0, built.stderr
    assert "builder:" in built.stderr and Path(built.stdout.strip()).is_dir()
    before = qemu_pids()
    up = mvmctl("dev", "up", str(WEB))
    assert up.returncode == 0, up.stderr
    try:
        assert "Hello from an mvm flake" in _fetch(8090)
        shell = mvmctl("exec", "web-dev", "--", "cat", "/srv/www/index.html")
        assert shell.returncode == 0 and "mvm flake" in shell.stdout, shell.stderr
    finally:
        down = mvmctl("dev", "down", str(WEB))
    assert down.returncode == 0, down.stderr
    assert qemu_pids() == before


def test_persistent_builder_serves_submits_with_a_shared_cache_and_stops(
    mvm_home: Path, tmp_path: Path
) -> None:
    """start -> status -> submit (built) -> submit (cache hit) -> bad submit -> stop:
    the background pool keeps its cache between submits and leaves nothing running."""
    project = tmp_path / "web"  # a copy with a unique page: its first build is a miss
    shutil.copytree(WEB, project)
    flake = (project / "flake.nix").read_text()
    flake = flake.replace("path:../../nix", f"path:{WEB.parents[1] / 'nix'}")
    (project / "flake.nix").write_text(flake.replace("Hello from", f"{uuid.uuid4()} from"))
    assert mvmctl("persistent-builder", "status").returncode != 0  # nothing yet
    started = mvmctl("persistent-builder", "start", "--size", "2")
    assert started.returncode == 0, started.stderr
    pid = int((mvm_home / "builder" / "pid").read_text().split(":")[0])
    try:
        status = mvmctl("persistent-builder", "status")
        assert status.returncode == 0 and json.loads(status.stdout)["pid"] == pid
        first = mvmctl("persistent-builder", "submit", str(project))
        assert first.returncode == 0, first.stderr
        assert (Path(first.stdout.strip()) / "rootfs.ext4").is_file()
        assert "cache hit" not in first.stderr
        again = mvmctl("persistent-builder", "submit", str(project))
        assert again.returncode == 0 and again.stdout == first.stdout
        assert "cache hit" in again.stderr, again.stderr
        assert json.loads(mvmctl("persistent-builder", "status").stdout)["builds"] == [
            str(project),
            str(project),
        ]
        bad = mvmctl("persistent-builder", "submit", str(project / "flake.nix"))
        assert bad.returncode != 0 and bad.stderr.count("\n") == 1, bad.stderr
        assert "E_BUILD_SOURCE" in bad.stderr
    finally:
        stopped = mvmctl("persistent-builder", "stop")
    assert stopped.returncode == 0, stopped.stderr
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists()
    assert not (mvm_home / "builder" / "builder.sock").exists()
    gone = mvmctl("persistent-builder", "status")
    assert gone.returncode != 0 and "E_BUILDER_NOT_RUNNING" in gone.stderr
