"""vCPUs/memory are checked in VmRequest, before admission (issue 15): out of range is
refused with a coded error and no plan is signed, so the audit log stays empty;
port specs with a bad address are E_PORT_SPEC, not E_PORT_IN_USE."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mvm.engine.base.errors import ConfigError
from mvm.engine.request.vmrequest import PortMapping, VmRequest


@pytest.mark.parametrize(
    ("vcpus", "memory", "code"),
    [
        (0, None, "E_VCPUS"),
        (-1, None, "E_VCPUS"),
        (1000, None, "E_VCPUS"),
        (None, 0, "E_MEMORY"),
        (None, -5, "E_MEMORY"),
        (None, 32, "E_MEMORY"),
    ],
)
def test_out_of_range_resources_refused(vcpus: int | None, memory: int | None, code: str) -> None:
    with pytest.raises(ConfigError) as info:
        VmRequest(name="vm", image_dir="/nonexistent", vcpus=vcpus, memory_mib=memory)
    assert info.value.code == code


def test_both_problems_reported() -> None:
    with pytest.raises(ConfigError) as info:
        VmRequest(name="vm", image_dir="/x", vcpus=0, memory_mib=0)
    assert "vcpus" in info.value.message and "memory_mib" in info.value.message


def test_in_range_accepted() -> None:
    req = VmRequest(name="vm", image_dir="/x", vcpus=64, memory_mib=64)
    assert (req.vcpus, req.memory_mib) == (64, 64)


@pytest.mark.parametrize(
    "flag", [["--vcpus", "1000"], ["--vcpus", "-1"], ["--vcpus", "0"], ["--memory", "0"]]
)
def test_cli_refuses_before_any_plan_is_signed(tmp_path: Path, flag: list[str]) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "MVM_HOME": str(home)}
    result = subprocess.run(
        [sys.executable, "-m", "mvm.cli", "up", "--backend", "stub", *flag],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert result.stderr.startswith(("error[E_VCPUS]", "error[E_MEMORY]")), result.stderr
    assert not (home / "audit.db").exists() or _rows(home / "audit.db") == 0


def _rows(db: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM audit_log").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize(
    "spec", ["999.1.1.1:18487:80", "18487:80:90", "1.2.3:80:80", "0:80", "80:70000", "a:b"]
)
def test_bad_port_specs_are_port_spec(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        PortMapping.parse(spec)
    assert info.value.code == "E_PORT_SPEC"


def test_good_port_specs() -> None:
    assert PortMapping.parse("8080:80") == PortMapping(8080, 80, "127.0.0.1")
    assert PortMapping.parse("0.0.0.0:8080:80").host_addr == "0.0.0.0"
    assert PortMapping.parse("localhost:8080:80").host_addr == "127.0.0.1"
