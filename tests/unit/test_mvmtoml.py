"""mvm.toml: every key checked, each problem one coded line naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mvm import ConfigError
from mvm.engine.request.mvmtoml import load_mvm_toml


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "flake.nix").write_text("{ }\n")
    (tmp_path / "data").mkdir(exist_ok=True)
    path = tmp_path / "mvm.toml"
    path.write_text(text)
    return path


def test_full_file_parses(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        'flake = "."\nprofile = "web"\nvcpus = 2\nmemory_mib = 512\nhypervisor = "qemu"\n'
        'ports = ["8080:80"]\nvolumes = ["./data:/mnt/data:64"]\n',
    )
    config = load_mvm_toml(path)
    assert (config.vcpus, config.memory_mib, config.profile) == (2, 512, "web")
    assert config.ports[0].host_port == 8080 and config.ports[0].guest_port == 80
    assert config.volumes[0].host == str(tmp_path / "data") and config.volumes[0].size_mb == 64


@pytest.mark.parametrize(
    ("text", "code", "key"),
    [
        ("vcpu = 2\n", "E_TOML_UNKNOWN_KEY", "vcpu"),
        ('vcpus = "2"\n', "E_TOML_TYPE", "vcpus"),
        ("vcpus = true\n", "E_TOML_TYPE", "vcpus"),
        ("memory_mib = 1\n", "E_TOML_RANGE", "memory_mib"),
        ('hypervisor = "vmware"\n', "E_TOML_VALUE", "hypervisor"),
        ('flake = "./nope"\n', "E_TOML_PATH", "flake"),
        ('ports = ["99999:80"]\n', "E_PORT_SPEC", "ports[0]"),
        ('volumes = ["./missing:/mnt/x"]\n', "E_VOLUME_HOST", "volumes[0]"),
        ("vcpus = [\n", "E_TOML_SYNTAX", ""),
    ],
)
def test_problems_are_coded(tmp_path: Path, text: str, code: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_mvm_toml(_write(tmp_path, text))
    assert info.value.code == code
    assert key in info.value.message


FLAKE = """{
  inputs = { mvm.url = "github:tinylabscom/mvm"; };
  outputs = { self, mvm, ... }: {
    packages.x86_64-linux.default = mvm.lib.x86_64-linux.mkGuest {
      name = "ok"; entrypoint.command = [ "/bin/sh" "-c" "sleep 1" ];
    };
  };
}
"""


def _validate(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mvm.cli", "validate", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
    )


def test_mvmctl_validate_reports_every_problem_and_evaluates_the_flake(tmp_path: Path) -> None:
    _write(tmp_path, 'vcpus = 0\nmemory_mib = "x"\nbogus = 1\n')
    bad = _validate(cwd=tmp_path)  # no argument: the project in this folder
    assert bad.returncode == 1
    codes = [line.split("]")[0] for line in bad.stderr.splitlines()]
    # the three mvm.toml problems AND the flake ("{ }" has no outputs), one line each
    assert codes[:3] == ["error[E_TOML_TYPE", "error[E_TOML_UNKNOWN_KEY", "error[E_TOML_RANGE"]
    assert len(codes) == 4 and codes[3].startswith("error[E_"), bad.stderr
    (tmp_path / "flake.nix").write_text(FLAKE)
    (tmp_path / "mvm.toml").write_text('flake = "."\n')
    ok = _validate(str(tmp_path))
    assert ok.returncode == 0, ok.stderr
    assert "packages.x86_64-linux.default evaluates" in ok.stdout


def test_mvmctl_validate_reads_mvm_toml(tmp_path: Path) -> None:
    good = _write(tmp_path, "vcpus = 2\n")
    (tmp_path / "flake.nix").write_text(FLAKE)
    ok = subprocess.run(
        [sys.executable, "-m", "mvm.cli", "validate", str(good)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0 and "2 vCPU" in ok.stdout
    good.write_text("cpus = 2\n")
    bad = subprocess.run(
        [sys.executable, "-m", "mvm.cli", "validate", str(good)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode != 0
    assert bad.stderr.startswith("error[E_TOML_UNKNOWN_KEY]") and len(bad.stderr.splitlines()) == 1
