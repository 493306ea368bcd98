"""Which project a command means: --flake refs, --attr, --profile, ./mvm.toml defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from mvm.cli.project import find_target, flake_dir, parse_attr
from mvm.engine.base.errors import ConfigError


def _project(root: Path, toml: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "flake.nix").write_text("{ }\n")
    if toml is not None:
        (root / "mvm.toml").write_text(toml)
    return root


def test_flake_refs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _project(tmp_path / "p")
    monkeypatch.chdir(root)
    assert flake_dir(".") == root
    assert flake_dir(f"path:{root}") == root
    assert flake_dir("path:.") == root
    with pytest.raises(ConfigError) as info:
        flake_dir("github:foo/bar")
    assert info.value.code == "E_FLAKE_REF"
    with pytest.raises(ConfigError) as info:
        flake_dir(str(tmp_path))
    assert info.value.code == "E_BUILD_SOURCE"


@pytest.mark.parametrize(
    ("attr", "result"),
    [("packages.x86_64-linux.default", "default"), (".#dev", "dev"), ("web", "web")],
)
def test_attr_forms(attr: str, result: str) -> None:
    assert parse_attr(attr) == result


@pytest.mark.parametrize(
    ("attr", "code"),
    [
        ("packages.aarch64-linux.default", "E_FLAKE_SYSTEM"),
        ("packages.riscv-linux.default", "E_FLAKE_ATTR"),
        ("a.b", "E_FLAKE_ATTR"),
        ("bad name", "E_PROFILE"),
    ],
)
def test_bad_attrs(attr: str, code: str) -> None:
    import platform

    if platform.machine() != "x86_64" and code == "E_FLAKE_SYSTEM":
        pytest.skip("the foreign system is x86_64 here")
    with pytest.raises(ConfigError) as info:
        parse_attr(attr)
    assert info.value.code == code


def test_mvm_toml_gives_profile_and_flags_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _project(tmp_path / "p", 'flake = "."\nprofile = "web"\nvcpus = 2\n')
    monkeypatch.chdir(root)
    found = find_target(None)
    assert found is not None and found.attr == "web" and found.toml is not None
    assert found.toml.vcpus == 2
    overridden = find_target(None, flake=".", profile="dev")
    assert overridden is not None and overridden.attr == "dev" and overridden.source == root


def test_no_project_is_none_but_profile_needs_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert find_target(None) is None
    assert find_target("demo") is None
    with pytest.raises(ConfigError) as info:
        find_target(None, profile="dev")
    assert info.value.code == "E_BUILD_SOURCE"
