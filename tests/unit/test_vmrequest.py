from __future__ import annotations

import pytest

from mvm import ConfigError, PortMapping, VmRequest


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8080:80", PortMapping(8080, 80, "127.0.0.1")),
        ("0.0.0.0:8080:80", PortMapping(8080, 80, "0.0.0.0")),
        ("localhost:1:65535", PortMapping(1, 65535, "127.0.0.1")),
    ],
)
def test_port_mapping_parses(text: str, expected: PortMapping) -> None:
    assert PortMapping.parse(text) == expected


@pytest.mark.parametrize("text", ["80", "a:b", "8080:0", "70000:80", "1:2:3:4", ""])
def test_bad_port_mapping_is_a_coded_error(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        PortMapping.parse(text)
    assert info.value.code == "E_PORT_SPEC"
    assert "\n" not in info.value.one_line()


def test_duplicate_host_port_rejected() -> None:
    with pytest.raises(ConfigError, match="mapped twice"):
        VmRequest(name="a", image_dir="/x", ports=(PortMapping(1, 2), PortMapping(1, 3)))


@pytest.mark.parametrize("name", ["", "-x", "a/b", "x" * 64, "a b"])
def test_bad_vm_name(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        VmRequest(name=name, image_dir="/x")
    assert info.value.code == "E_VM_NAME"
