"""`--health-action restart-vm` (issue 13): by reading, an unhealthy service made its
HealthCheck fail under a `never` restart policy, the VM's supervisor escalated and the
VM was torn down for good (attached: the whole engine with it), while the user asked for
a restart. Until the runtime can restart a VM, the request is refused before anything
starts, with one coded line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mvm.engine.base.errors import ConfigError
from mvm.engine.request.vmrequest import VmRequest


def _mvmctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mvm.cli", *args],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_up_with_restart_vm_is_refused_before_anything_starts() -> None:
    up = _mvmctl("up", "--backend", "stub", "--name", "hv", "--health-action", "restart-vm")
    try:
        assert up.returncode != 0, "restart-vm was accepted: the VM would be stopped, not restarted"
        lines = [ln for ln in up.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, up.stderr
        assert lines[0].startswith("error[E_HEALTH_ACTION_UNSUPPORTED]"), up.stderr
        assert "restart-service" in lines[0]  # the hint names what works
        assert json.loads(_mvmctl("ls", "--json").stdout) == []
    finally:
        if up.returncode == 0:
            _mvmctl("down", "hv")


@pytest.mark.parametrize(
    ("action", "code"),
    [("restart-vm", "E_HEALTH_ACTION_UNSUPPORTED"), ("reboot", "E_HEALTH_ACTION")],
)
def test_sdk_request_refuses_it_too(action: str, code: str) -> None:
    with pytest.raises(ConfigError) as err:
        VmRequest(name="x", image_dir="/nonexistent", health_action=action)  # type: ignore[arg-type]
    assert err.value.code == code


@pytest.mark.parametrize("action", ["none", "restart-service"])
def test_the_actions_that_work_are_accepted(action: str) -> None:
    assert VmRequest(name="x", image_dir="/i", health_action=action).health_action == action  # type: ignore[arg-type]
