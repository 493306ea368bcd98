"""The Nix library (nix/lib) evaluated by the host's real Nix against the stub package set.

Parity with the offline builder is checked field by field: mvm-meta.json
(`image_meta`), the generated guest files (`_populate`), and error codes for the
same bad input. Both paths write the same keys; only `builder`'s value differs
("nix" / "offline"); `spec_hash` matches too whenever the spec is one the
offline builder can take.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from mvm.backends import nix_meta
from mvm.backends.demo import DEMO_DEV_SPEC, DEMO_SPEC
from mvm.backends.image import builder as ib
from mvm.engine.base.errors import BuildError, ConfigError, MvmError
from mvm.engine.images.imagespec import HealthCheck, ImageSpec, Service, Uids

pytestmark = pytest.mark.skipif(not nix_meta.nix_available(), reason="needs nix-instantiate")

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
# The one meta field whose value says which path built the image.
NIX_ONLY_FIELDS = {"builder"}
CAMEL = {
    "entrypointKind": "entrypointKind",
    "initSystem": "init_system",
    "expectedBootMs": "expected_boot_ms",
    "agentBinary": "agent_binary",
    "rootlessEntrypoint": "rootless_entrypoint",
    "vmlinuxPresent": "vmlinux_present",
    "initrdPresent": "initrd_present",
    "agentPath": "agent_path",
    "memoryMib": "memory_mib",
    "healthChecks": "health_checks",
    "specHash": "spec_hash",
}

SPECS = [
    DEMO_SPEC,
    DEMO_DEV_SPEC,
    ImageSpec(name="shell-only"),
    ImageSpec(name="shell-dev", dev=True, vcpus=4, memory_mib=1024),
    ImageSpec(name="cmd", command=("echo", 'it\'s "quoted"', "$HOME")),
    ImageSpec(name="cmd-root", command=("/bin/sh", "-c", "id"), uids=Uids(entrypoint=0)),
    ImageSpec(name="dev-rootless", dev=True, uids=Uids(agent=991, entrypoint=4242)),
    ImageSpec(name="nobody-app", uids=Uids(entrypoint=65534)),
    ImageSpec(
        name="multi",
        services={
            "b-api": Service(
                command="httpd -f -p 8080",
                pre_start="mkdir -p /run/api && echo 'ready'",
                env={"MODE": "prod", "GREETING": "hello world", "EMPTY": "", "Q": "it's"},
                restart="on-failure",
            ),
            "a.worker": Service(command="sleep 1000", restart="never"),
        },
        health_checks={
            "b-api": HealthCheck(health_cmd="wget -q -O- http://127.0.0.1:8080/"),
            "a.worker": HealthCheck(
                health_cmd="true", health_interval_secs=1, health_timeout_secs=1
            ),
        },
        packages=("httpd", "wget"),
        extra_files={"/srv/a b/x.txt": "one\ntwo", "/etc/app.conf": "k = 'v'\n"},
        vcpus=2,
        memory_mib=512,
    ),
    # The seeds' shapes: argv services, a multi-line preStart, a named shell with
    # auxiliary services, a string command, file modes, a hypervisor preference.
    ImageSpec(
        name="seed-shapes",
        shell="/bin/ash",
        services={
            "web": Service(
                command=("httpd", "-f", "-p", "8080", "-h", "/tmp/www"),
                pre_start=(
                    "mkdir -p /tmp/www\necho '<h1>Hello from mvm!</h1>' > /tmp/www/index.html\n"
                ),
            ),
        },
        extra_files={"/usr/local/bin/hi": "#!/bin/sh\necho hi\n", "/etc/x": "x"},
        extra_file_modes={"/usr/local/bin/hi": 0o755},
        hypervisor="firecracker",
    ),
    ImageSpec(name="string-cmd", command="echo hi && sleep 1", dev=True),  # type: ignore[arg-type]
    # Seccomp tiers and per-service uids: a given uid, and defaults around taken ones.
    ImageSpec(
        name="hardened",
        seccomp="strict",
        uids=Uids(entrypoint=1001),
        services={
            "a": Service(command="sleep 1", pre_start="id -u"),
            "b": Service(command="sleep 1", uid=1002),
            "c": Service(command="sleep 1"),
        },
    ),
    ImageSpec(
        name="loose-dev",
        dev=True,
        seccomp="unrestricted",
        services={"s": Service(command="sleep 1", uid=4000), "t": Service(command="sleep 1")},
    ),
]


def offline_meta(spec: ImageSpec) -> dict[str, Any]:
    return ib.image_meta(spec, hashlib.sha256(ib.spec_json(spec)).hexdigest())


def _same_but_builder(nix: dict[str, Any], offline: dict[str, Any]) -> bool:
    """Equal metas: same keys, same values except `builder` ("nix" vs "offline")."""
    drop = NIX_ONLY_FIELDS | {"verity"}  # verity: added host-side at finalisation
    return (nix["builder"], offline["builder"]) == ("nix", "offline") and {
        k: v for k, v in nix.items() if k not in drop
    } == {k: v for k, v in offline.items() if k not in drop}


async def test_meta_matches_offline_builder_field_by_field() -> None:
    infos = await nix_meta.guests_info([("mkGuest", nix_meta.spec_to_nix_args(s)) for s in SPECS])
    assert len(infos) == len(SPECS)
    for spec, info in zip(SPECS, infos, strict=True):
        nix, offline = info["meta"], offline_meta(spec)
        assert set(nix) == set(offline), spec.name
        for key, value in offline.items():
            if key not in NIX_ONLY_FIELDS:
                assert nix[key] == value, f"{spec.name}: {key}: nix {nix[key]!r} != {value!r}"
        assert (nix["builder"], offline["builder"]) == ("nix", "offline")
        assert nix["hypervisor"] == spec.hypervisor
        assert (nix["expected_boot_ms"], nix["agent_binary"]) == (300, "real")
        assert (nix["vmlinux_present"], nix["initrd_present"]) == (True, False)


async def test_passthru_mvm_is_the_meta_under_camel_case_names() -> None:
    (multi,) = [s for s in SPECS if s.name == "multi"]
    info = await nix_meta.guest_info("mkGuest", nix_meta.spec_to_nix_args(multi))
    meta = info["meta"]
    for key, value in info.items():
        if key == "meta":
            continue
        assert meta[CAMEL.get(key, key)] == value, key
    assert info["services"] == ["a.worker", "b-api"]  # sorted like the offline builder


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"name": "a"}, ("shell", True, False, 0, False)),
        ({"name": "a", "dev": True}, ("shell", True, False, 0, False)),
        ({"name": "a", "dev": False}, ("shell", False, True, 1000, True)),
        ({"name": "a", "entrypoint": {"shell": "/bin/sh"}}, ("shell", True, False, 0, False)),
        (
            {"name": "a", "entrypoint": {"shell": "/bin/sh"}, "services": {"s": {"command": "x"}}},
            ("shell", True, False, 0, False),
        ),
        (
            {"name": "a", "entrypoint": {"command": "echo hi"}},
            ("command", False, True, 1000, True),
        ),
        (
            {"name": "a", "entrypoint": {"services": {"s": {"command": ["x"]}}}},
            ("services", False, True, 1000, True),
        ),
        ({"name": "a", "command": ["true"]}, ("command", False, True, 1000, True)),
        (
            {"name": "a", "command": ["true"], "services": {"s": {"command": "x"}}},
            ("command", False, True, 1000, True),
        ),
        ({"name": "a", "services": {"s": {"command": "x"}}}, ("services", False, True, 1000, True)),
        ({"name": "a", "dev": True, "uids": {"entrypoint": 7}}, ("shell", True, False, 7, True)),
        ({"name": "a", "dev": False, "uids": {"entrypoint": 0}}, ("shell", False, True, 0, False)),
    ],
)
async def test_inference_rules(args: dict[str, Any], expected: tuple[Any, ...]) -> None:
    kind, accessible, sealed, uid, rootless = expected
    info = await nix_meta.guest_info("mkGuest", args)
    assert (info["entrypointKind"], info["accessible"], info["sealed"]) == (
        kind,
        accessible,
        sealed,
    )
    assert (info["uids"]["agent"], info["uids"]["entrypoint"]) == (990, uid)
    assert isinstance(info["uids"]["services"], dict)
    assert info["rootlessEntrypoint"] is rootless
    assert (info["vcpus"], info["memoryMib"], info["expectedBootMs"]) == (1, 256, 300)
    assert (info["agentBinary"], info["agent_binary"]) == ("real", "real")
    entry = args.get("entrypoint") or {}
    services = {**entry.get("services", {}), **args.get("services", {})}
    spec = ImageSpec(
        name="a",
        command=entry.get("command", args.get("command")),
        shell=entry.get("shell"),
        services={n: Service(command=s["command"]) for n, s in services.items()},
        dev=args.get("dev"),
        uids=Uids(**args.get("uids", {})),
    )  # the offline builder infers the same
    assert (spec.entrypoint_kind, spec.accessible, spec.entrypoint_uid) == (kind, accessible, uid)
    assert info["meta"]["spec_hash"] == offline_meta(spec)["spec_hash"]


async def test_hypervisor_is_recorded_and_changes_the_hash() -> None:
    default, fc = await nix_meta.guests_info(
        [("mkGuest", {"name": "a"}), ("mkGuest", {"name": "a", "hypervisor": "firecracker"})]
    )
    assert (default["hypervisor"], fc["hypervisor"]) == ("auto", "firecracker")
    assert default["specHash"] == offline_meta(ImageSpec(name="a"))["spec_hash"]
    fc_offline = offline_meta(ImageSpec(name="a", hypervisor="firecracker"))
    assert (fc["specHash"], fc_offline["hypervisor"]) == (fc_offline["spec_hash"], "firecracker")
    assert fc["specHash"] != default["specHash"]


def _populated(spec: ImageSpec, tmp: Path) -> ib._Tree:
    """The offline builder's guest tree for `spec` (busybox, agent and init faked)."""
    fake = tmp / "fake"
    fake.write_bytes(b"\x7fELF")
    tree = ib._Tree(tmp / "tree")
    ib._populate(tree, spec, offline_meta(spec), fake, fake, fake, [], [])
    return tree


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
async def test_generated_files_match_the_offline_tree(spec: ImageSpec, tmp_path: Path) -> None:
    layout = await nix_meta.evaluate(
        "(lib.mkGuest args).passthru.layout", args=nix_meta.spec_to_nix_args(spec)
    )
    tree = _populated(spec, tmp_path)
    offline_files = {
        "/" + str(p.relative_to(tree.root))
        for p in tree.root.rglob("*")
        if p.is_file() and not p.is_symlink()
    }
    skipped = {"/bin/busybox", "/init", ib.AGENT_PATH, *spec.extra_files}  # copied, not generated
    assert set(layout["files"]) == offline_files - skipped
    for guest, entry in layout["files"].items():
        host = tree.host(guest)
        assert int(entry["mode"], 8) == host.stat().st_mode & 0o7777, guest
        if guest == "/etc/mvm/mvm-meta.json":
            nix_meta_json, offline_json = json.loads(entry["text"]), json.loads(host.read_text())
            for key in NIX_ONLY_FIELDS:
                del nix_meta_json[key], offline_json[key]
            assert nix_meta_json == offline_json
            assert entry["text"].startswith('{\n  "accessible": ')  # same indent=2 format
        else:
            assert entry["text"] == host.read_text(), guest
    dirs = {d["path"]: d for d in layout["dirs"]}
    for guest, d in dirs.items():
        assert int(d["mode"], 8) == tree.host(guest).stat().st_mode & 0o7777, guest
        assert (d["uid"], d["uid"]) == tree.owners.get(guest, (0, 0)), guest
    assert set(tree.owners) <= set(dirs)


async def _nix_error(function: str, args: Any) -> MvmError:
    with pytest.raises(MvmError) as info:
        await nix_meta.guest_info(function, args)  # type: ignore[arg-type]
    return info.value


# (mkGuest args, code, message part, the same spec for the offline builder or None)
GUEST_ERRORS: list[tuple[dict[str, Any], str, str, dict[str, Any] | None]] = [
    ({"name": "Bad_Name"}, "E_SPEC_NAME", "image name 'Bad_Name' is invalid", {"name": "Bad_Name"}),
    ({"command": ["true"]}, "E_SPEC_NAME", "name is required", None),
    (
        {"name": "a", "command": []},
        "E_SPEC_COMMAND",
        "command must be a non-empty list",
        {"name": "a", "command": ()},
    ),
    ({"name": "a", "command": 7}, "E_SPEC_COMMAND", "must be a non-empty list of strings", None),
    (
        {"name": "a", "vcpus": 0},
        "E_SPEC_VCPUS",
        "vcpus=0 out of range 1..64",
        {"name": "a", "vcpus": 0},
    ),
    (
        {"name": "a", "memoryMib": 32},
        "E_SPEC_MEMORY",
        "memory_mib=32 out of range 64..65536",
        {"name": "a", "memory_mib": 32},
    ),
    (
        {"name": "a", "healthChecks": {"web": {"healthCmd": "true"}}},
        "E_SPEC_HEALTH",
        "health check for unknown service 'web'",
        {"name": "a", "health_checks": {"web": HealthCheck(health_cmd="true")}},
    ),
    (
        {"name": "a", "extraFiles": {"etc/x": ""}},
        "E_SPEC_PATH",
        "must be absolute without '..'",
        {"name": "a", "extra_files": {"etc/x": ""}},
    ),
    (
        {"name": "a", "extraFiles": {"/etc/mvm/x": ""}},
        "E_SPEC_PATH",
        "path /etc/mvm/x is reserved by the image builder",
        {"name": "a", "extra_files": {"/etc/mvm/x": ""}},
    ),
    (
        {"name": "a", "uids": {"entrypoint": 990}},
        "E_SPEC_UID",
        "entrypoint uid 990 equals the agent uid",
        {"name": "a", "uids": Uids(entrypoint=990)},
    ),
    (
        {"name": "a", "uids": {"agent": 70000}},
        "E_SPEC_UID",
        "agent uid 70000 out of range 0..65535",
        {"name": "a", "uids": Uids(agent=70000)},
    ),
    (
        {"name": "a", "services": {"-x": {"command": "true"}}},
        "E_SPEC_SERVICE",
        "service name '-x' is invalid",
        {"name": "a", "services": {"-x": Service(command="true")}},
    ),
    (
        {"name": "a", "services": {"s": {"command": "true", "env": {"A": "x\ny"}}}},
        "E_SPEC_ENV",
        "env 'A' must be a shell name with a one-line value",
        {"name": "a", "services": {"s": Service(command="true", env={"A": "x\ny"})}},
    ),
    (
        {"name": "a", "services": {"s": {"command": "true", "restart": "sometimes"}}},
        "E_SPEC_RESTART",
        "restart must be one of always, on-failure, never",
        None,
    ),
    (
        {"name": "a", "services": {"s": {"command": "x", "pre_start": "y"}}},
        "E_SPEC_SERVICE",
        "unknown argument(s) ['pre_start']",
        None,
    ),
    (
        {"name": "a", "memoryMiB": 512},
        "E_SPEC_INVALID",
        "unknown argument(s) ['memoryMiB']",
        None,
    ),
    ({"name": "a", "hypervisor": "vbox"}, "E_SPEC_HYPERVISOR", "unknown hypervisor 'vbox'", None),
    (
        {"name": "a", "seccomp": "paranoid"},
        "E_SPEC_SECCOMP",
        "unknown seccomp tier 'paranoid' (one of unrestricted, standard, strict)",
        {"name": "a", "seccomp": "paranoid"},
    ),
    (
        {"name": "a", "services": {"s": {"command": "x", "uid": 990}}},
        "E_SPEC_UID",
        "service s: uid 990 equals the agent uid",
        {"name": "a", "services": {"s": Service(command="x", uid=990)}},
    ),
    ({"name": "a", "packages": ["../x"]}, "E_SPEC_PACKAGE", "package '../x' is neither", None),
    (
        {"name": "a", "entrypoint": {"shell": "/bin/sh", "command": ["x"]}},
        "E_SPEC_ENTRYPOINT",
        "entrypoint must declare exactly one of shell, command, services (got command, shell)",
        None,
    ),
    (
        {"name": "a", "entrypoint": {}},
        "E_SPEC_ENTRYPOINT",
        "exactly one of shell, command, services (got none)",
        None,
    ),
    (
        {"name": "a", "entrypoint": {"shell": "bash"}},
        "E_SPEC_ENTRYPOINT",
        "entrypoint.shell must be an absolute path",
        {"name": "a", "shell": "bash"},
    ),
    (
        {"name": "a", "entrypoint": {"cmd": ["x"]}},
        "E_SPEC_ENTRYPOINT",
        "entrypoint: unknown argument(s) ['cmd']",
        None,
    ),
    (
        {"name": "a", "entrypoint": {"command": ["x"]}, "command": ["y"]},
        "E_SPEC_ENTRYPOINT",
        "command is given twice",
        None,
    ),
    (
        {
            "name": "a",
            "entrypoint": {"services": {"web": {"command": ["x"]}}},
            "services": {"web": {"command": "y"}},
        },
        "E_SPEC_SERVICE",
        "service 'web' is defined both in entrypoint.services and in services",
        None,
    ),
    (
        {"name": "a", "services": {"s": {"command": []}}},
        "E_SPEC_SERVICE",
        "service s: command must be a non-empty list of strings (argv) or a non-empty string",
        None,
    ),
    (
        {"name": "a", "extraFiles": {"/x": {"content": "y", "mode": "rwx"}}},
        "E_SPEC_MODE",
        "extra file /x: mode must be octal permissions",
        None,
    ),
    (
        {"name": "a", "extraFiles": {"/x": {"content": "y", "mode": "4755"}}},
        "E_SPEC_MODE",
        "(0..0777)",
        None,
    ),
    (
        {"name": "a", "extraFiles": {"/x": {"text": "y"}}},
        "E_SPEC_PATH",
        "extraFiles./x: unknown argument(s) ['text']",
        None,
    ),
    (
        {"name": "a", "memory_mib": 512, "memoryMib": 512},
        "E_SPEC_INVALID",
        "give memory_mib once",
        None,
    ),
]


@pytest.mark.parametrize(
    ("args", "code", "part", "offline"), GUEST_ERRORS, ids=[e[1] + e[2][:24] for e in GUEST_ERRORS]
)
async def test_mkguest_errors_have_the_offline_builders_codes(
    args: dict[str, Any], code: str, part: str, offline: dict[str, Any] | None
) -> None:
    err = await _nix_error("mkGuest", args)
    assert isinstance(err, nix_meta.SpecErrors)
    assert err.code == code
    assert err.message.startswith("mkGuest: ")
    assert part in err.message
    assert all(e.code.startswith("E_") and "\n" not in e.message for e in err.all_errors)
    if offline is not None:
        with pytest.raises(ConfigError) as py:
            ib._validate_spec(ImageSpec(**offline))
        assert py.value.code == code


async def test_every_problem_is_reported_one_coded_line_each() -> None:
    """Nix `throw` stops at the first; spec.nix collects every check and nix_meta splits
    the joined lines back into one ConfigError each."""
    err = await _nix_error(
        "mkGuest",
        {
            "name": "Bad_Name",
            "vcpus": 0,
            "memory_mib": 1,
            "entrypoint": {"shell": "sh"},
            "services": {"web": {"command": 3, "restart": "sometimes"}},
            "extraFiles": {"/x": {"content": "y", "mode": "9"}},
            "hypervisor": "vbox",
        },
    )
    assert isinstance(err, nix_meta.SpecErrors)
    codes = [e.code for e in err.all_errors]
    assert codes == [
        "E_SPEC_NAME", "E_SPEC_ENTRYPOINT", "E_SPEC_VCPUS", "E_SPEC_MEMORY",
        "E_SPEC_SERVICE", "E_SPEC_RESTART", "E_SPEC_MODE", "E_SPEC_HYPERVISOR",
    ]  # fmt: skip
    assert all(e.message.startswith("mkGuest: ") and "\n" not in e.message for e in err.all_errors)
    assert (err.code, err.message) == (codes[0], err.all_errors[0].message)


async def test_unavailable_packages_are_one_line_before_anything_else(tmp_path: Path) -> None:
    """The offline package set decides: its placeholders are refused as ONE coded line,
    even when other arguments are wrong too, and an interpolated one is that line too."""
    offline = f"import {nix_meta.nix_dir()}/stub-pkgs/offline {{ }}"
    result = await nix_meta.evaluate(
        f'let pkgs = {offline}; in builtins.tryEval (lib.mkGuest {{ name = "a"; }})',
    )
    assert result["success"] is True
    for body, message in [
        (
            'lib.mkGuest { name = "Bad"; vcpus = 0; packages = with pkgs; [ jq curl ]; }',
            "mkGuest: pkgs.jq, pkgs.curl need nixpkgs",
        ),
        (
            'lib.mkGuest { name = "a"; services.s.command = "${pkgs.redis}/bin/redis-server"; }',
            "nixpkgs: pkgs.redis needs nixpkgs",
        ),
    ]:
        with pytest.raises(ConfigError) as info:
            await nix_meta.evaluate(f"let pkgs = {offline}; in (({body}).passthru.mvm)")
        assert info.value.code == "E_NIXPKGS_UNAVAILABLE"
        assert info.value.message.startswith(message)
        assert info.value.message.endswith("(no network for github:NixOS/nixpkgs)")
        assert len(getattr(info.value, "all_errors", ())) == 1
        assert info.value.hint is not None and "busybox applet" in info.value.hint


async def test_offline_flake_with_an_unknown_package_name(tmp_path: Path) -> None:
    from mvm.engine.builders.offline import flake_to_spec

    (tmp_path / "flake.nix").write_text(
        "{ outputs = { self, nixpkgs, mvm }: let pkgs = import nixpkgs { system = "
        '"x86_64-linux"; }; in { packages.x86_64-linux.default = mvm.lib.x86_64-linux.mkGuest'
        ' { name = "a"; packages = with pkgs; [ no-such-package ]; }; }; }'
    )
    with pytest.raises(ConfigError) as info:
        await flake_to_spec(tmp_path, "default")
    assert info.value.code == "E_NIXPKGS_UNAVAILABLE"
    assert "'no-such-package' is not defined here" in info.value.message


async def test_seed_arguments_build_the_same_spec_offline(tmp_path: Path) -> None:
    """A seed-shaped flake (entrypoint.shell + services with argv and a multi-line
    preStart, extraFiles { content; mode; }, memory_mib) becomes the ImageSpec whose
    offline meta equals the Nix meta."""
    from mvm.engine.builders.offline import flake_info, spec_from_nix

    (tmp_path / "flake.nix").write_text(
        """{
  outputs = { self, nixpkgs, mvm, ... }: {
    packages.x86_64-linux.default = mvm.lib.x86_64-linux.mkGuest {
      name = "shapes";
      entrypoint.shell = "/bin/ash";
      services.web = {
        preStart = ''
          mkdir -p /tmp/www
          echo '<h1>Hello from mvm!</h1>' > /tmp/www/index.html
        '';
        command = [ "httpd" "-f" "-p" "8080" "-h" "/tmp/www" ];
        env = { PORT = "8080"; };
      };
      extraFiles."/usr/local/bin/hi" = { content = "#!/bin/sh\necho hi\n"; mode = "0755"; };
      extraFiles."/etc/motd" = "hello\n";
      vcpus = 2;
      memory_mib = 1024;
      hypervisor = "firecracker";
    };
  };
}
"""
    )
    info = await flake_info(tmp_path, "default")
    spec = spec_from_nix(info["spec"])
    assert spec.services["web"].pre_start == (
        "mkdir -p /tmp/www\necho '<h1>Hello from mvm!</h1>' > /tmp/www/index.html\n"
    )
    assert spec.services["web"].command == ("httpd", "-f", "-p", "8080", "-h", "/tmp/www")
    assert (spec.extra_file_modes, spec.memory_mib, spec.shell) == (
        {"/usr/local/bin/hi": 0o755}, 1024, "/bin/ash",
    )  # fmt: skip
    assert _same_but_builder(info["mvm"]["meta"], offline_meta(spec))
    tree = _populated(spec, tmp_path)
    assert tree.host("/usr/local/bin/hi").stat().st_mode & 0o777 == 0o755
    assert tree.host("/etc/mvm/name").read_text() == "shapes\n"
    assert "MVM_SHELL=/bin/ash\n" in tree.host("/etc/mvm/image.env").read_text()
    run = tree.host("/etc/mvm/services/web/run").read_text()
    assert run == "#!/bin/sh\nexec 'httpd' '-f' '-p' '8080' '-h' '/tmp/www'\n"


# --------------------------------------------------------------- function guests


def hello_ir() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((FIXTURES / "ir" / "hello.json").read_text())
    return doc


def _workload_expr(body: str) -> str:
    """``w`` is mkFunctionWorkload of args.irFile / args.appPkg (absolute path strings)."""
    return (
        "let w = lib.mkFunctionWorkload { irFile = /. + args.irFile; appPkg = /. + args.appPkg; };"
        f" in {body}"
    )


def _write_ir(tmp_path: Path, ir: dict[str, Any]) -> dict[str, str]:
    (tmp_path / "ir.json").write_text(json.dumps(ir))
    return {"irFile": str(tmp_path / "ir.json"), "appPkg": str(FIXTURES / "hello" / "src")}


async def test_function_workload_guest(tmp_path: Path) -> None:
    ir = hello_ir()
    ir["apps"][0]["resources"].update(vcpus=2, memory_mb=512)
    out = await nix_meta.evaluate(
        _workload_expr(
            "{ inherit (w.passthru) mvm; spec = { inherit (w.passthru.spec) command extraTrees"
            " vcpus memoryMib; files = builtins.attrNames w.passthru.spec.extraFiles;"
            " packages = map (p: p.name) w.passthru.spec.packages; };"
            " offline = w.mvmFunctionWorkload; svc = { inherit (w.functionService) language"
            " variant service; }; }"
        ),
        args=_write_ir(tmp_path, ir),
    )
    mvm, spec = out["mvm"], out["spec"]
    assert (mvm["name"], mvm["entrypointKind"], mvm["sealed"]) == ("hello", "command", True)
    assert mvm["uids"] == {"agent": 990, "entrypoint": 1000, "services": {}}
    assert (spec["vcpus"], spec["memoryMib"]) == (2, 512)
    assert set(spec["packages"]) == {"python3"}  # servicePackages + map (p: pkgs.${p})
    assert list(spec["extraTrees"]) == ["/app"]  # appPkg (copied to the store) at working_dir
    assert spec["extraTrees"]["/app"].endswith("-src")
    assert spec["command"] == ["/bin/sh", "/usr/lib/mvm/wrappers/runner"]
    assert spec["files"] == [
        "/etc/mvm/runtime.json",
        "/etc/mvm/wrapper.json",
        "/usr/lib/mvm/wrappers/runner",
    ]  # fmt: skip  (mkGuest writes /etc/mvm/entrypoint from command)
    assert out["offline"]["irFile"] == str(tmp_path / "ir.json")
    assert out["svc"] == {
        "language": "python", "variant": "oneshot",
        "service": {"hello": {"command": "exec /bin/sh /usr/lib/mvm/wrappers/runner",
                              "restart": "always"}},
    }  # fmt: skip


async def test_the_nix_runner_really_runs(tmp_path: Path) -> None:
    files = await nix_meta.evaluate(
        _workload_expr("w.functionService.extraFiles"), args=_write_ir(tmp_path, hello_ir())
    )
    text = files["/usr/lib/mvm/wrappers/runner"]
    header = text.splitlines()[1]
    store_python = header.split()[1]
    assert store_python.endswith("/bin/python3")
    runner = tmp_path / "runner"
    runner.write_text(text.replace(store_python, sys.executable, 1))
    app_dir = str(FIXTURES / "hello" / "src")
    config = json.loads(files["/etc/mvm/wrapper.json"]) | {"working_dir": app_dir}
    (tmp_path / "wrapper.json").write_text(json.dumps(config))
    env = {"MVM_RUN_MODE": "oneshot", "MVM_WRAPPER_JSON": str(tmp_path / "wrapper.json"),
           "PATH": "/usr/bin:/bin"}  # fmt: skip
    ok = subprocess.run(
        ["/bin/sh", str(runner)], input=b'[[], {"name": "nix"}]', capture_output=True,
        env=env, timeout=30, check=False,
    )  # fmt: skip
    assert (ok.returncode, json.loads(ok.stdout)) == (0, "hello, nix"), ok.stderr
    bad = subprocess.run(
        ["/bin/sh", str(runner)], input=b'[[], {"nom": "x"}]', capture_output=True,
        env=env, timeout=30, check=False,
    )  # fmt: skip
    assert bad.returncode == 1 and bad.stdout == b""
    assert json.loads(bad.stderr.splitlines()[-1])["error"]["code"] == "E_FUNCTION_ARGS"


def _ir_with(**changes: Any) -> dict[str, Any]:
    ir = hello_ir()
    app = ir["apps"][0]
    for key, value in changes.items():
        if key == "apps":
            ir["apps"] = value(app)
        else:
            app[key] = value
    return ir


FUNCTION_ERRORS: list[tuple[dict[str, Any], str, str]] = [
    (_ir_with(apps=lambda a: [a, {**a, "name": "two"}]), "E_IR_APPS",
     "mkFunctionWorkload: IR must have exactly one app"),
    (_ir_with(apps=lambda a: []), "E_IR_APPS", "mkFunctionWorkload: IR must have exactly one app"),
    (_ir_with(image={"kind": "oci_base", "reference": "python", "digest": "sha256:" + "a" * 64}),
     "E_IR_IMAGE", 'mkFunctionWorkload: app.image.kind must be "nix_packages"'),
    (_ir_with(entrypoints=[{"kind": "command", "command": ["true"]}]), "E_IR_ENTRYPOINT",
     "mkFunctionWorkload: expected exactly one primary function entrypoint"),
    (_ir_with(entrypoints=[
        {"kind": "function", "language": "python", "module": "a", "function": "f", "primary": True},
        {"kind": "function", "language": "python", "module": "a", "function": "g", "primary": True},
    ]), "E_IR_ENTRYPOINT", "mkFunctionWorkload: expected exactly one primary function entrypoint"),
    (_ir_with(entrypoints=[
        {"kind": "function", "language": "cobol", "module": "a", "function": "f", "primary": True},
    ]), "E_IR_LANGUAGE",
     'mkFunctionService: language "cobol" has no entry in the language registry'),
    (_ir_with(entrypoints=[
        {"kind": "function", "language": "python", "module": "a", "function": "f",
         "format": "msgpack", "primary": True},
    ]), "E_IR_FORMAT", "no msgpack implementation in the image"),
]  # fmt: skip


@pytest.mark.parametrize(("ir", "code", "part"), FUNCTION_ERRORS)
async def test_function_workload_errors(
    tmp_path: Path, ir: dict[str, Any], code: str, part: str
) -> None:
    with pytest.raises(MvmError) as info:
        await nix_meta.evaluate(_workload_expr("w.drvPath"), args=_write_ir(tmp_path, ir))
    assert isinstance(info.value, ConfigError)
    assert (info.value.code, part in info.value.message) == (code, True), info.value.message


async def test_mkfunctionservice_is_the_language_factory() -> None:
    out = await nix_meta.evaluate(
        'let s = lib.mkFunctionService { language = "node"; module = "app"; function = "greet";'
        ' concurrency = { warm = 2; }; workloadId = "hello"; dev = true; };'
        " in { inherit (s) language variant; files = s.extraFiles;"
        " packages = map (p: p.name) s.servicePackages; }",
        args={},
    )
    assert (out["language"], out["variant"], out["packages"]) == ("node", "longrunning", ["nodejs"])
    assert json.loads(out["files"]["/etc/mvm/wrapper.json"])["mode"] == "dev"
    assert json.loads(out["files"]["/etc/mvm/runtime.json"]) == {
        "language": "node", "module": "app", "function": "greet", "format": "json",
        "source_path": "/app", "concurrency": {"warm": 2},
    }  # fmt: skip


# --------------------------------------------------------------- derivation and sources


async def test_derivation_evaluates_and_uses_the_shared_guest_sources() -> None:
    guest = nix_meta.nix_dir().parent / "backends" / "guest"  # what the library sees
    result = await nix_meta.evaluate(
        "let g = lib.mkGuest args; in {"
        " drv = g.drvPath; script = g.buildCommand; main = lib.agent.main;"
        " modules = lib.agent.modules;"
        f' init = "${{{guest}/init}}"; agentC = "${{{guest}/agent.c}}";'
        f' agentDir = "${{{guest}/agent}}"; }}',
        args=nix_meta.spec_to_nix_args(DEMO_SPEC),
    )
    assert re.fullmatch(r"/nix/store/[a-z0-9]{32}-mvm-image-demo\.drv", result["drv"])
    # Store paths are content hashes: equal paths mean the very same init and agent sources.
    assert f'install -m 0755 {result["init"]} "$tree/init"' in result["script"]
    assert (result["main"], result["modules"]) == (result["agentC"], result["agentDir"])
    assert "mkfs.ext4 -q -F -t ext4 -L mvm-root" in result["script"]
    assert "hash_seed=" in result["script"] and "debugfs -w -f debugfs.cmd" in result["script"]


async def test_demo_nix_is_the_demo_spec() -> None:
    meta = await nix_meta.evaluate(f"(lib.mkGuest (import {REPO}/nix/demo.nix)).passthru.mvm.meta")
    assert _same_but_builder(meta, offline_meta(DEMO_SPEC))


async def test_flake_exposes_lib_per_system(tmp_path: Path) -> None:
    """The flake, with nixpkgs overridden by the stub set, in a throwaway store."""
    nix = shutil.which("nix")
    if nix is None:
        pytest.skip("needs the nix command")
    env = {
        **os.environ,
        "NIX_CONFIG": "build-users-group =\nexperimental-features = nix-command flakes\n",
    }
    argv = [
        nix, "eval", "--json", "--store", str(tmp_path / "store"),
        "--override-input", "nixpkgs", f"path:{REPO}/nix/stub-pkgs",
        f"path:{REPO}/nix#lib.x86_64-linux",
        "--apply", "lib: builtins.attrNames lib",
    ]  # fmt: skip
    result = await trio.run_process(
        argv, env=env, capture_stdout=True, capture_stderr=True, check=False
    )
    assert result.returncode == 0, result.stderr.decode()
    names = json.loads(result.stdout)
    assert {"mkGuest", "mkFunctionWorkload", "mkFunctionService"} <= set(names)


async def test_eval_failure_without_a_code_is_a_build_error() -> None:
    with pytest.raises(BuildError) as info:
        await nix_meta.evaluate("lib.noSuchFunction args", args={})
    assert info.value.code == "E_NIX_EVAL"
    assert "noSuchFunction" in info.value.message


async def test_host_path_packages_cannot_become_nix_args() -> None:
    with pytest.raises(ConfigError) as info:
        nix_meta.spec_to_nix_args(attrs.evolve(DEMO_SPEC, packages=("/usr/bin/env",)))
    assert info.value.code == "E_SPEC_PACKAGE"


@pytest.mark.skipif(
    subprocess.run(
        ["nix-instantiate", "--store", "dummy://", "--find-file", "nixpkgs"],
        capture_output=True,
        check=False,
    ).returncode
    != 0
    if shutil.which("nix-instantiate")
    else True,
    reason="no <nixpkgs> on NIX_PATH",
)
async def test_meta_with_real_nixpkgs() -> None:
    meta = await nix_meta.meta_for_spec(DEMO_SPEC, pkgs="nixpkgs")
    assert _same_but_builder(meta, offline_meta(DEMO_SPEC))


# --------------------------------------------------------------- a real Nix build

_HOST_BUILD_TOOLS = ("nix-build", "debugfs", "mkfs.ext4")


def _debugfs_tree(image: Path) -> dict[str, tuple[str, str, str]]:
    """Every path in the image -> (mode, uid, gid), read with debugfs `ls -p` (no mount)."""
    entries: dict[str, tuple[str, str, str]] = {}
    pending = ["/"]
    while pending:
        directory = pending.pop()
        listing = subprocess.run(
            ["debugfs", "-R", f'ls -p "{directory}"', str(image)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        for line in listing.splitlines():
            parts = line.split("/")
            if len(parts) < 7 or parts[5] in (".", ".."):
                continue
            _, _, mode, uid, gid, name = parts[:6]
            path = directory.rstrip("/") + "/" + name
            entries[path] = (mode, uid, gid)
            if int(mode, 8) & 0o170000 == 0o040000:
                pending.append(path)
    return entries


def _debugfs_cat(image: Path, path: str) -> bytes:
    return subprocess.run(
        ["debugfs", "-R", f'cat "{path}"', str(image)], capture_output=True, check=True
    ).stdout


@pytest.mark.skipif(
    not (all(shutil.which(t) for t in _HOST_BUILD_TOOLS) and ib.BUSYBOX.is_file()),
    reason="needs nix-build, e2fsprogs and busybox-static",
)
async def test_nix_built_image_has_the_offline_builders_tree(tmp_path: Path) -> None:
    """Build the demo image with Nix (host tools as the package set, throwaway store) and
    with the offline builder from the same agent and /init: same entries, modes, owners
    and generated files; same mvm-meta.json except the Nix-only fields."""
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF fake kernel")
    nix_state = tmp_path / "n"
    env = {
        **os.environ,
        "NIX_CONFIG": "build-users-group =\nsandbox = false\nsubstituters =\n",
        "NIX_STORE_DIR": str(nix_state / "store"),
        "NIX_STATE_DIR": str(nix_state / "var"),
        "NIX_LOG_DIR": str(nix_state / "log"),
    }
    expr = (
        f"let lib = import {REPO}/nix/lib {{ pkgs = import {REPO}/nix/stub-pkgs/host.nix {{ }}; }};"
        f' in lib.mkGuest (import {REPO}/nix/demo.nix // {{ kernel = "{kernel}"; }})'
    )
    built = await trio.run_process(
        ["nix-build", "--no-out-link", "--quiet", "-E", expr],
        env=env, capture_stdout=True, capture_stderr=True, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr.decode()[-2000:]
    out = Path(built.stdout.decode().strip())
    assert sorted(p.name for p in out.iterdir()) == ["mvm-meta.json", "rootfs.ext4", "vmlinux"]
    assert (out / "vmlinux").read_bytes() == kernel.read_bytes()
    # The demo is sealed: Nix built (and shipped) only the agent without exec/console.
    (agent,) = (nix_state / "store").glob("*-mvm-agent-sealed/bin/mvm-agent")
    assert not list((nix_state / "store").glob("*-mvm-agent/bin/mvm-agent"))
    assert b"do_exec" not in agent.read_bytes() and b"run_start" in agent.read_bytes()

    init = REPO / "backends" / "guest" / "init"
    offline = await ib.build_image(
        DEMO_SPEC, kernel=kernel, agent=agent, init=init, cache=tmp_path / "cache"
    )
    nix_meta_json = json.loads((out / "mvm-meta.json").read_text())
    assert _same_but_builder(nix_meta_json, offline.meta)

    nix_tree = _debugfs_tree(out / "rootfs.ext4")
    offline_tree = _debugfs_tree(offline.rootfs)
    assert len(offline_tree) > 400  # busybox applet links, /etc, /usr/bin/mvm-agent, ...
    assert set(nix_tree) - {"/lost+found"} == set(offline_tree) - {"/lost+found"}
    for path, entry in offline_tree.items():
        assert nix_tree[path] == entry, path
    assert nix_tree["/home/app"][1:] == ("1000", "1000")
    for path in ("/init", ib.AGENT_PATH, "/etc/passwd", "/etc/mvm/image.env",
                 "/etc/mvm/services/web/run", "/etc/mvm/health/web/cmd",
                 "/srv/www/index.html"):  # fmt: skip
        assert _debugfs_cat(out / "rootfs.ext4", path) == _debugfs_cat(offline.rootfs, path), path
    assert _debugfs_cat(out / "rootfs.ext4", "/init") == init.read_bytes()


def test_nix_rootfs_uses_the_offline_builders_mke2fs_recipe() -> None:
    """Both build paths must make the same filesystem: the Nix copy of the mke2fs
    config (Nix cannot import Python) is the offline builder's, line for line."""
    from mvm.backends.image import ext4

    text = (REPO / "nix" / "lib" / "rootfs.nix").read_text()
    found = re.search(r"mke2fsConf = ''\n(.*?)\n  '';", text, re.S)
    assert found is not None
    nix_conf = "\n".join(line.removeprefix("    ") for line in found.group(1).splitlines())
    assert nix_conf + "\n" == ext4._MKE2FS_CONF
    assert f"sourceDateEpoch = {ext4.SOURCE_DATE_EPOCH};" in text
