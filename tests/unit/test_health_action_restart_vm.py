"""`--health-action` values at request time: unknown ones are one coded line; the three
the docs name are accepted (restart-vm restarts the VM in place: tests/integration/
test_restart_vm.py shows it on QEMU)."""

from __future__ import annotations

import pytest

from mvm.engine.base.errors import ConfigError
from mvm.engine.request.vmrequest import VmRequest


def test_an_unknown_action_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        VmRequest(name="x", image_dir="/nonexistent", health_action="reboot")  # type: ignore[arg-type]
    assert err.value.code == "E_HEALTH_ACTION"
    assert "restart-vm" in (err.value.hint or "")


@pytest.mark.parametrize("action", ["none", "restart-service", "restart-vm"])
def test_the_documented_actions_are_accepted(action: str) -> None:
    assert VmRequest(name="x", image_dir="/i", health_action=action).health_action == action  # type: ignore[arg-type]
