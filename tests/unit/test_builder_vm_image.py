"""The builder VM's image cache (engine/builders/builder_vm/image.py): every reason code
the seed names comes from a real state of the cache directory, and only ``hit`` is ready;
the Debian closure is read from this machine's dpkg database."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from mvm.engine.base.errors import BuildPhaseError
from mvm.engine.builders.builder_vm import inspect
from mvm.engine.builders.builder_vm.debian import closure, guest_path
from mvm.engine.builders.builder_vm.image import ARTIFACTS, PROVENANCE


def _cache(root: Path, fingerprint: str = "f1") -> Path:
    current = root / "current"
    current.mkdir(parents=True)
    digests = {}
    for name in ARTIFACTS:
        (current / name).write_bytes(name.encode() * 100)
        digests[name] = hashlib.sha256((current / name).read_bytes()).hexdigest()
    prov = {
        "fingerprint": fingerprint,
        "artifacts": digests,
        "summary": {"artifacts": sorted(digests)},
    }
    (current / PROVENANCE).write_text(json.dumps(prov))
    return current


def _edit(current: Path, **changes: object) -> None:
    prov = json.loads((current / PROVENANCE).read_text())
    for key, value in changes.items():
        if value is None:
            prov.pop(key)
        else:
            prov[key] = value
    (current / PROVENANCE).write_text(json.dumps(prov))


def test_a_complete_cache_is_a_hit_and_nothing_else_is_ready(tmp_path: Path) -> None:
    assert inspect("none", tmp_path / "empty").reason == "missing_artifact"
    current = _cache(tmp_path)
    state = inspect("f1", tmp_path)
    assert state.reason == "hit" and state.ready
    assert state.summary() == {"kind": "builder-vm", "arch": state.summary()["arch"],
                               "ready": True, "reason": "hit"}  # fmt: skip
    assert inspect("f2", tmp_path).reason == "fingerprint_mismatch"
    assert not inspect("f2", tmp_path).ready
    assert inspect(None, tmp_path).reason == "hit"  # `dev status`: no inputs gathered
    (current / "vmlinux").write_bytes(b"changed")
    assert inspect("f1", tmp_path).reason == "artifact_digest_mismatch"
    (current / "rootfs.ext4").unlink()
    assert inspect("f1", tmp_path).reason == "missing_artifact"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"fingerprint": None}, "missing_fingerprint"),
        ({"artifacts": None}, "missing_artifact_digest_manifest"),
        ({"summary": {"artifacts": ["vmlinux"]}}, "provenance_mismatch"),
    ],
)
def test_each_damaged_record_has_its_reason(
    tmp_path: Path, change: dict[str, object], reason: str
) -> None:
    _edit(_cache(tmp_path), **change)
    assert inspect("f1", tmp_path).reason == reason


def test_no_provenance_at_all(tmp_path: Path) -> None:
    (_cache(tmp_path) / PROVENANCE).unlink()
    assert inspect("f1", tmp_path).reason == "missing_provenance"


def test_the_debian_closure_of_nix_has_its_libraries_and_merged_usr_paths() -> None:
    found = closure(["nix-bin"])
    assert {"nix-bin", "libc6", "perl"} <= set(found.versions)
    assert "/usr/bin/nix" in found.files
    assert not any(f.startswith("/usr/share/doc/") for f in found.files)
    assert guest_path("/lib/x86_64-linux-gnu/libc.so.6") == "/usr/lib/x86_64-linux-gnu/libc.so.6"
    assert guest_path("/bin/bash") == "/usr/bin/bash"
    assert guest_path("/etc/nix/nix.conf") == "/etc/nix/nix.conf"


def test_a_package_that_is_not_installed_is_a_bootstrap_error_naming_it() -> None:
    with pytest.raises(BuildPhaseError) as caught:
        closure(["nix-bin", "mvm-no-such-package-a", "mvm-no-such-package-b"])
    assert caught.value.code == "E_BUILDER_PACKAGES"
    assert "mvm-no-such-package-a, mvm-no-such-package-b" in caught.value.message
    assert "builder bootstrap" in str(caught.value)
