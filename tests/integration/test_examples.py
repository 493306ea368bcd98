"""The README's project example: examples/web (flake.nix + mvm.toml) builds and boots.

Without a Nix store the build goes through the auto builder's offline fallback,
which must say why it chose it; the dev VM then serves the flake's page on the
port mvm.toml publishes, and `dev down` leaves no VMM behind."""

from __future__ import annotations

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
