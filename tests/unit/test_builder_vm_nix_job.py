"""The ``nix build`` a builder VM runs and the phase its failures are blamed on (the
Builder VM seed's troubleshooting table), from Nix 2.8's own messages."""

from __future__ import annotations

from mvm.engine.builders.builder_vm.nix_job import build_script, declared_inputs, failure

BEGINNER_INPUTS = """{
inputs = {
mvm.url = "github:auser/mvm?dir=nix";
nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";
};
outputs = { mvm, nixpkgs, ... }: { };
}
"""


def test_inputs_in_both_spellings() -> None:
    assert declared_inputs(BEGINNER_INPUTS) == {"mvm", "nixpkgs"}
    assert declared_inputs('{ inputs.mvm.url = "path:../nix"; outputs = _: { }; }') == {"mvm"}


def test_the_script_overrides_mvm_and_nixpkgs_only_where_declared() -> None:
    script = build_script("/nix/var/mvm/j1", "packages.x86_64-linux.default", {"mvm", "nixpkgs"})
    assert "--override-input mvm path:/usr/share/mvm/src " in script
    assert "--override-input mvm/nixpkgs path:/usr/share/mvm/offline-nixpkgs" in script
    assert "--override-input nixpkgs path:/usr/share/mvm/offline-nixpkgs" in script
    assert "path:/nix/var/mvm/j1/src#packages.x86_64-linux.default" in script
    assert "--no-write-lock-file" in script and "TMPDIR=/nix/var/mvm/tmp" in script
    bare = build_script("/w", "default", {"mvm"})
    assert "--override-input nixpkgs " not in bare


def test_failures_name_their_phase() -> None:
    missing = (
        "error: flake 'path:/w/src' does not provide attribute "
        "'packages.x86_64-linux.nope', 'legacyPackages.x86_64-linux.nope' or 'nope'"
    )
    attr = failure(1, [missing], "p#nope")
    assert (attr.code, attr.phase) == ("E_BUILD_ATTR", "nix evaluation")
    coded = failure(1, ["error: E_NIXPKGS_UNAVAILABLE: nixpkgs: pkgs.foo is not in the offline "
                        "package set (known: curl, python3)"], "p")  # fmt: skip
    assert coded.code == "E_NIXPKGS_UNAVAILABLE" and "known: curl" in coded.message
    system = failure(1, ["building '/nix/store/x.drv'...", "error: a 'aarch64-linux' with "
                         "features {} is required to build '/nix/store/x.drv', but I am a "
                         "'x86_64-linux' with features {benchmark}"], "p")  # fmt: skip
    assert (system.code, system.phase) == ("E_BUILD_SYSTEM", "nix build")
    evaluation = failure(1, ["error: undefined variable 'pkgz'"], "p")
    assert (evaluation.code, evaluation.phase) == ("E_BUILD_EVAL", "nix evaluation")
    build = failure(100, ["building '/nix/store/y.drv'...", "error: builder for '/nix/store/y.drv' "
                          "failed with exit code 1"], "p")  # fmt: skip
    assert (build.code, build.phase) == ("E_BUILD_NIX_FAILED", "nix build")
