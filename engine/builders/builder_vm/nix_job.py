"""One ``nix build`` inside a builder VM: the command line, and what its failure means.

Pure functions, so the phase a failure is blamed on (the seed's troubleshooting table:
builder bootstrap, Nix evaluation, Nix build, artifact extraction) is testable without
a VM. The user's ``mvm`` input is always the library the builder image carries; its
``nixpkgs`` (and the library's own) is the offline package set, because the builder VM
has no network to fetch github:NixOS/nixpkgs from.
"""

from __future__ import annotations

import re
import shlex

from mvm.engine.base.errors import BuildPhaseError
from mvm.engine.builders.builder_vm.layout import LIBRARY, NIX_STATE, OFFLINE_NIXPKGS

_CODED = re.compile(r"\b(E_[A-Z][A-Z0-9_]*): (.+)")
_SYSTEM = re.compile(r"a '([^']+)' with features \{[^}]*\} is required to build")
_ATTR = re.compile(r"does not provide attribute '([^']+)'")


def declared_inputs(flake_nix: str) -> set[str]:
    """Input names a flake.nix declares (``inputs.x.url = ...`` or ``x.url = ...`` in an
    ``inputs = { ... }`` block): a rough read, enough to pick the overrides."""
    block = re.search(r"inputs\s*=\s*\{(.*?)\n\s*\};", flake_nix, re.S)
    names = set(re.findall(r"(?:^|[{;])\s*inputs\.([A-Za-z0-9_-]+)\.", flake_nix, re.M))
    if block:
        names |= set(
            re.findall(r"^\s*([A-Za-z0-9_-]+)\.(?:url|follows|flake)\b", block.group(1), re.M)
        )
        names |= set(re.findall(r"^\s*([A-Za-z0-9_-]+)\s*=\s*\{", block.group(1), re.M))
    return names


def build_script(workdir: str, attr: str, inputs: set[str]) -> str:
    """The shell the builder runs: Nix's home and temp on the persistent volume, the
    overrides, and ``nix build`` of the staged workspace."""
    overrides: list[str] = []
    if "mvm" in inputs:
        overrides += ["--override-input", "mvm", f"path:{LIBRARY}"]
        overrides += ["--override-input", "mvm/nixpkgs", f"path:{OFFLINE_NIXPKGS}"]
    if "nixpkgs" in inputs:
        overrides += ["--override-input", "nixpkgs", f"path:{OFFLINE_NIXPKGS}"]
    argv = [
        "nix", "build", "--print-build-logs", "--no-write-lock-file",
        "--out-link", f"{workdir}/result", *overrides, f"path:{workdir}/src#{attr}",
    ]  # fmt: skip
    var = f"{NIX_STATE}/var/mvm"
    return (
        f"set -e\nmkdir -p {var}/home {var}/tmp\n"
        f"export HOME={var}/home TMPDIR={var}/tmp XDG_CACHE_HOME={var}/cache\n"
        'cd "$TMPDIR"\n' + "exec " + " ".join(shlex.quote(a) for a in argv) + " 2>&1\n"
    )


def failure(status: int, lines: list[str], label: str) -> BuildPhaseError:
    """The one coded line a failed ``nix build`` becomes, naming its phase."""
    text = "\n".join(lines)
    tail = " | ".join(ln.strip() for ln in lines[-3:] if ln.strip())[:400]
    building = any(ln.startswith(("building '", "these ", "this derivation")) for ln in lines)
    if m := _CODED.search(text):  # our own library's or package set's line
        phase = "nix build" if building else "nix evaluation"
        return BuildPhaseError(phase, m.group(2).strip(), code=m.group(1))
    if m := _ATTR.search(text):
        return BuildPhaseError(
            "nix evaluation",
            f"{label}: the flake does not provide attribute {m.group(1)!r}",
            code="E_BUILD_ATTR",
            hint="check packages.<system>.<profile> in flake.nix and --profile",
        )
    if m := _SYSTEM.search(text):
        return BuildPhaseError(
            "nix build",
            f"{label} is for {m.group(1)}, the builder VM is x86_64-linux",
            code="E_BUILD_SYSTEM",
            hint='set system = "x86_64-linux" in flake.nix',
        )
    if not building:
        return BuildPhaseError(
            "nix evaluation", f"nix could not evaluate {label}: {tail}", code="E_BUILD_EVAL"
        )
    return BuildPhaseError(
        "nix build", f"nix build {label} failed (exit {status}): {tail}", code="E_BUILD_NIX_FAILED"
    )
