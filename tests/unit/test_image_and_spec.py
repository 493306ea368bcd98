from __future__ import annotations

import json
from pathlib import Path

import pytest

from mvm import ConfigError, Image, ImageSpec, MvmError
from mvm.engine.images.specfile import load_spec, spec_from_dict


def _image_dir(tmp_path: Path, meta: object = None) -> Path:
    (tmp_path / "vmlinux").write_bytes(b"k")
    (tmp_path / "rootfs.ext4").write_bytes(b"r")
    (tmp_path / "mvm-meta.json").write_text(json.dumps(meta or {"name": "x", "sealed": False}))
    return tmp_path


def test_image_load_reads_meta(tmp_path: Path) -> None:
    image = Image.load(_image_dir(tmp_path, {"name": "web", "sealed": False, "vcpus": 2}))
    assert (image.name, image.sealed, image.vcpus) == ("web", False, 2)


@pytest.mark.parametrize(
    ("remove", "code"),
    [
        ("vmlinux", "E_KERNEL_MISSING"),
        ("rootfs.ext4", "E_ROOTFS_MISSING"),
        ("mvm-meta.json", "E_IMAGE_META"),
    ],
)
def test_image_missing_parts(tmp_path: Path, remove: str, code: str) -> None:
    (_image_dir(tmp_path) / remove).unlink()
    with pytest.raises(MvmError) as info:
        Image.load(tmp_path)
    assert info.value.code == code


def test_image_bad_meta_json(tmp_path: Path) -> None:
    _image_dir(tmp_path)
    (tmp_path / "mvm-meta.json").write_text("{nope")
    with pytest.raises(ConfigError) as info:
        Image.load(tmp_path)
    assert info.value.code == "E_IMAGE_META"


def test_spec_inference_rules() -> None:
    # The seeds' rule: a shell entrypoint is accessible (dev), unless dev = false says otherwise.
    shell = ImageSpec(name="a")
    assert (shell.entrypoint_kind, shell.sealed, shell.entrypoint_uid) == ("shell", False, 0)
    sealed_shell = ImageSpec(name="a", shell="/bin/sh", dev=False)
    assert (sealed_shell.sealed, sealed_shell.entrypoint_uid) == (True, 1000)
    string_cmd = spec_from_dict({"name": "s", "command": "echo hi"})
    assert (string_cmd.command, string_cmd.sealed) == (("/bin/sh", "-c", "echo hi"), True)
    dev = spec_from_dict({"name": "b", "dev": True, "services": {"w": {"command": "httpd"}}})
    assert (dev.entrypoint_kind, dev.accessible, dev.entrypoint_uid) == ("services", True, 0)
    cmd = spec_from_dict({"name": "c", "command": ["/bin/true"], "uids": {"entrypoint": 7}})
    assert (cmd.entrypoint_kind, cmd.entrypoint_uid) == ("command", 7)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ({"name": "x", "bogus": 1}, "E_SPEC_INVALID"),
        ({"name": "x", "vcpus": "two"}, "E_SPEC_INVALID"),
        ({"name": "Bad Name"}, "E_SPEC_NAME"),
        ({"name": "x", "command": []}, "E_SPEC_COMMAND"),
        ({"name": "x", "command": 7}, "E_SPEC_COMMAND"),
        ({"name": "x", "shell": "bash"}, "E_SPEC_ENTRYPOINT"),
        ({"name": "x", "hypervisor": "vbox"}, "E_SPEC_HYPERVISOR"),
        (
            {"name": "x", "extra_files": {"/x": ""}, "extra_file_modes": {"/x": 0o4755}},
            "E_SPEC_MODE",
        ),
        ({"name": "x", "extra_file_modes": {"/y": 0o755}}, "E_SPEC_MODE"),
        ({"name": "x", "memory_mib": 1}, "E_SPEC_MEMORY"),
        ({"name": "x", "health_checks": {"web": {"health_cmd": "true"}}}, "E_SPEC_HEALTH"),
        ({"name": "x", "extra_files": {"etc/x": ""}}, "E_SPEC_PATH"),
        (
            {"name": "x", "services": {"w": {"command": "a", "restart": "sometimes"}}},
            "E_SPEC_INVALID",
        ),
    ],
)
def test_bad_specs_are_coded(data: dict[str, object], code: str) -> None:
    with pytest.raises(ConfigError) as info:
        spec_from_dict(data)
    assert info.value.code == code


def test_load_spec_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_spec(tmp_path / "missing.json")
    assert info.value.code == "E_SPEC_MISSING"
    bad = tmp_path / "bad.json"
    bad.write_text("[1]")
    with pytest.raises(ConfigError) as info:
        load_spec(bad)
    assert info.value.code == "E_SPEC_INVALID"
