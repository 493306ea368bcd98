"""``auto`` passes over host Nix when a flake's inputs need a network this host lacks
(a /nix/store appearing, e.g. from Debian's nix-bin, must not flip builds to a Nix that
then retries downloads for seconds and fails)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mvm.engine.builders import auto
from mvm.engine.builders.auto import Probe, probe_inputs, remote_inputs

SEED_FLAKE = """{
description = "my microVM app";
inputs = {
nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";
mvm.url = "github:tinylabscom/mvm";
};
outputs = { self, nixpkgs, mvm, ... }: { };
}
"""

HOST = Probe("host", True, "nix 2.8 with a usable store")


def test_remote_inputs_skip_mvm_and_local_paths() -> None:
    assert remote_inputs(SEED_FLAKE) == ["github:NixOS/nixpkgs/nixos-25.11"]
    text = 'inputs.mvm.url = "github:auser/mvm?dir=nix";\n  inputs.lib.url = "path:../lib";\n'
    assert remote_inputs(text) == []
    assert remote_inputs('  x.url = "git+https://example.org/x";') == ["git+https://example.org/x"]


def test_no_network_refuses_host_nix_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "flake.nix").write_text(SEED_FLAKE)
    monkeypatch.setattr(auto, "_network_reaches", lambda host="github.com": False)
    probe = probe_inputs(tmp_path, HOST)
    assert not probe.ok
    assert "github:NixOS/nixpkgs/nixos-25.11" in probe.reason and "no network" in probe.reason


def test_network_or_local_inputs_keep_host_nix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "flake.nix").write_text(SEED_FLAKE)
    monkeypatch.setattr(auto, "_network_reaches", lambda host="github.com": True)
    assert probe_inputs(tmp_path, HOST) == HOST
    monkeypatch.setattr(auto, "_network_reaches", lambda host="github.com": False)
    (tmp_path / "flake.nix").write_text('{ inputs.mvm.url = "path:/x"; outputs = _: { }; }')
    assert probe_inputs(tmp_path, HOST) == HOST
