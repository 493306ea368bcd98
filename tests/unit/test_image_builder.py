"""Offline image builder: real mkfs.ext4 images, inspected with debugfs (no mount, no root)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from mvm.backends.demo import DEMO_DEV_SPEC, DEMO_SPEC
from mvm.backends.image import builder as ib
from mvm.engine.base.errors import BuildError, ConfigError
from mvm.engine.images.imagespec import HealthCheck, ImageSpec, Service, Uids

pytestmark = pytest.mark.skipif(
    not (shutil.which("mkfs.ext4") and shutil.which("debugfs") and ib.BUSYBOX.is_file()),
    reason="needs e2fsprogs and busybox-static (./scripts/setup)",
)

META_FIELDS = {
    "name", "accessible", "sealed", "entrypointKind", "init_system", "expected_boot_ms",
    "agent_binary", "agent_path", "rootless_entrypoint", "uids", "vmlinux_present",
    "initrd_present", "hypervisor", "builder", "vcpus", "memory_mib",
    "services", "health_checks", "spec_hash", "seccomp_tier", "verity",
}  # fmt: skip


@attrs.frozen
class Inputs:
    kernel: Path
    agent: Path
    init: Path
    cache: Path


@pytest.fixture
def inputs(tmp_path: Path) -> Inputs:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF fake kernel")
    agent = tmp_path / "mvm-agent"
    agent.write_bytes(b"\x7fELF fake agent")
    agent.chmod(0o600)  # the builder sets the guest mode, whatever the host mode
    init = tmp_path / "init"
    init.write_text("#!/bin/sh\nexec /bin/sh\n")
    return Inputs(kernel, agent, init, tmp_path / "cache")


async def build(spec: ImageSpec, inp: Inputs, cache: Path | None = None) -> ib.ImageArtifacts:
    return await ib.build_image(
        spec, kernel=inp.kernel, agent=inp.agent, init=inp.init, cache=cache or inp.cache
    )


def debugfs(image: Path, request: str) -> str:
    out = subprocess.run(
        ["debugfs", "-R", request, str(image)], capture_output=True, text=True, check=True
    )
    return out.stdout


def ls(image: Path, directory: str) -> dict[str, tuple[int, int, int]]:
    """name -> (mode, uid, gid) from `debugfs ls -l`."""
    entries = {}
    for line in debugfs(image, f"ls -l {directory}").splitlines():
        parts = line.split()
        if len(parts) >= 9:
            entries[parts[-1]] = (int(parts[1], 8), int(parts[3]), int(parts[4]))
    return entries


def cat(image: Path, path: str) -> str:
    return debugfs(image, f"cat {path}")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- content


async def test_demo_image_content(inputs: Inputs) -> None:
    art = await build(DEMO_SPEC, inputs)
    img = art.rootfs
    assert art.rootfs.name == "rootfs.ext4" and art.rootfs.parent.name == art.key
    assert subprocess.run(["e2fsck", "-f", "-n", str(img)], capture_output=True).returncode == 0

    root = ls(img, "/")
    for d in ("bin", "etc", "usr", *(d.lstrip("/") for d in ib.BASE_DIRS)):
        assert root[d][0] & 0o170000 == 0o040000, d
    assert "init" in root

    env = dict(line.split("=", 1) for line in cat(img, "/etc/mvm/image.env").splitlines())
    assert env == {
        "MVM_NAME": "demo",
        "MVM_ENTRYPOINT_KIND": "services",
        "MVM_ENTRYPOINT_UID": "1000",
        "MVM_AGENT_UID": "990",
        "MVM_SEALED": "1",
        "MVM_SERVICES": "web",
        "MVM_SHELL": "/bin/sh",
        "MVM_SECCOMP": "standard",
    }
    assert cat(img, "/etc/mvm/services/web/uid") == "1001\n"  # its own uid (sealed)
    assert "svc-web:x:1001:1001:svc-web:/:/bin/false" in cat(img, "/etc/passwd").splitlines()
    assert cat(img, "/etc/mvm/services/web/run") == (
        "#!/bin/sh\nexec sh -c 'httpd -f -p 80 -h /srv/www'\n"
    )
    assert cat(img, "/etc/mvm/services/web/restart") == "always\n"
    assert "prestart" not in ls(img, "/etc/mvm/services/web")
    assert ls(img, "/etc/mvm/services/web")["run"][0] & 0o777 == 0o755
    assert cat(img, "/etc/mvm/health/web/cmd") == "wget -q -O /dev/null http://127.0.0.1/\n"
    assert cat(img, "/etc/mvm/health/web/interval") == "2\n"
    assert cat(img, "/srv/www/index.html").startswith("<h1>Hello from mvm</h1>")
    assert ls(img, "/srv/www")["index.html"][0] & 0o777 == 0o644
    assert "entrypoint" not in ls(img, "/etc/mvm")
    assert cat(img, "/etc/hostname") == "demo\n"
    assert cat(img, "/etc/machine-id") == ""
    # the guest's copy predates finalisation, which adds the verity tree's parameters
    guest_meta = json.loads(cat(img, "/etc/mvm/mvm-meta.json"))
    assert guest_meta == {k: v for k, v in art.meta.items() if k != "verity"}

    passwd = cat(img, "/etc/passwd").splitlines()
    assert "root:x:0:0:root:/root:/bin/sh" in passwd
    assert any(line.startswith("mvm-agent:x:990:990:") for line in passwd)
    assert any(line.startswith("app:x:1000:1000:") for line in passwd)
    assert "mvm-agent:x:990:" in cat(img, "/etc/group").splitlines()


async def test_busybox_and_applet_links(inputs: Inputs) -> None:
    img = (await build(DEMO_SPEC, inputs)).rootfs
    bin_ = ls(img, "/bin")
    assert bin_["busybox"][0] == 0o100711  # sealed: ELF programs are execute-only
    assert f"Size: {ib.BUSYBOX.stat().st_size}" in debugfs(img, "stat /bin/busybox")
    applets = subprocess.run(
        [str(ib.BUSYBOX), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for name in set(applets) - {"busybox", "init", "linuxrc"}:
        assert bin_[name][0] & 0o170000 == 0o120000, name  # symlink
    assert "busybox" in debugfs(img, "stat /bin/sh")  # fast symlink target
    assert ls(img, "/usr/sbin")["httpd"][0] & 0o170000 == 0o120000
    assert "init" not in ls(img, "/sbin") and "init" not in bin_


async def test_ownership_and_modes(inputs: Inputs) -> None:
    img = (await build(DEMO_SPEC, inputs)).rootfs
    assert ls(img, "/")["init"] == (0o100755, 0, 0)
    # Sealed: ELF programs are execute-only (non-dumpable processes); scripts stay 0755.
    assert ls(img, "/usr/bin")["mvm-agent"] == (0o100711, 0, 0)
    dev = (await build(DEMO_DEV_SPEC, inputs)).rootfs
    assert ls(dev, "/usr/bin")["mvm-agent"] == (0o100755, 0, 0)
    assert ls(dev, "/bin")["busybox"][0] == 0o100755
    assert ls(img, "/")["tmp"] == (0o041777, 0, 0)
    assert ls(img, "/")["root"] == (0o040700, 0, 0)
    assert ls(img, "/home")["app"] == (0o040755, 1000, 1000)
    # every other inode is root-owned, whoever ran the builder
    for directory in ("/", "/bin", "/etc", "/etc/mvm", "/usr/sbin"):
        for name, (_, uid, gid) in ls(img, directory).items():
            assert (uid, gid) == (0, 0), f"{directory}/{name}"


async def test_staging_owner_does_not_leak_into_the_image(
    inputs: Inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mke2fs -d copies the staging files' owners; a non-root builder's tree is owned
    by that user. Emulate it (chown the staged tree to nobody) and require the very
    same root-owned image: debugfs sets every inode's owner, so no root is needed."""
    as_root = await build(DEMO_SPEC, inputs, tmp_path / "c-root")
    if os.geteuid() != 0:
        pytest.skip("this run is itself unprivileged: every other test covers it")
    populate = ib._populate

    def populate_as_nobody(tree: ib._Tree, *args: Any) -> None:
        populate(tree, *args)
        for dirpath, dirnames, filenames in os.walk(tree.root):
            for name in (*dirnames, *filenames):
                os.lchown(Path(dirpath) / name, 65534, 65534)
        os.lchown(tree.root, 65534, 65534)

    monkeypatch.setattr(ib, "_populate", populate_as_nobody)
    as_nobody = await build(DEMO_SPEC, inputs, tmp_path / "c-nobody")
    assert ls(as_nobody.rootfs, "/")["init"] == (0o100755, 0, 0)
    assert ls(as_nobody.rootfs, "/home")["app"] == (0o040755, 1000, 1000)
    assert sha256(as_nobody.rootfs) == sha256(as_root.rootfs)


# ---------------------------------------------------------------- reproducibility and cache


async def test_reproducible_across_caches(inputs: Inputs, tmp_path: Path) -> None:
    a = await build(DEMO_SPEC, inputs, tmp_path / "c1")
    await trio.sleep(1.1)  # a different wall-clock second must not matter
    b = await build(DEMO_SPEC, inputs, tmp_path / "c2")
    assert a.key == b.key
    assert a.rootfs != b.rootfs
    assert sha256(a.rootfs) == sha256(b.rootfs)
    assert a.meta_path.read_bytes() == b.meta_path.read_bytes()


async def test_cache_reuse_does_not_rebuild(
    inputs: Inputs, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await build(DEMO_SPEC, inputs)
    before = first.rootfs.stat()

    async def no_mkfs(*args: object) -> None:
        raise AssertionError("rebuilt a cached image")

    monkeypatch.setattr(ib, "_make_filesystem", no_mkfs)
    second = await build(DEMO_SPEC, inputs)
    assert second == first
    after = second.rootfs.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    images = inputs.cache / "images"
    assert [p.name for p in images.iterdir()] == [first.key]  # no staging left


async def test_inputs_change_the_key(inputs: Inputs) -> None:
    base = await build(DEMO_SPEC, inputs)
    inputs.agent.write_bytes(b"\x7fELF fake agent v2")
    new_agent = await build(DEMO_SPEC, inputs)
    assert new_agent.key != base.key
    assert cat(new_agent.rootfs, "/usr/bin/mvm-agent") == "\x7fELF fake agent v2"
    other_spec = await build(attrs.evolve(DEMO_SPEC, memory_mib=512), inputs)
    assert other_spec.key != new_agent.key
    assert other_spec.meta["spec_hash"] != new_agent.meta["spec_hash"]
    assert len({p.name for p in (inputs.cache / "images").iterdir()}) == 3


async def test_vmlinux_is_a_hardlink_of_the_kernel(inputs: Inputs) -> None:
    art = await build(DEMO_SPEC, inputs)
    assert art.vmlinux.name == "vmlinux"
    assert art.vmlinux.stat().st_ino == inputs.kernel.stat().st_ino


async def test_cancelled_build_leaves_no_staging(
    inputs: Inputs, monkeypatch: pytest.MonkeyPatch
) -> None:
    reached = trio.Event()

    async def slow_mkfs(*args: object) -> None:
        reached.set()
        await trio.sleep_forever()

    monkeypatch.setattr(ib, "_make_filesystem", slow_mkfs)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(build, DEMO_SPEC, inputs)
        await reached.wait()
        assert any(p.name.startswith(".build-") for p in (inputs.cache / "images").iterdir())
        nursery.cancel_scope.cancel()
    assert list((inputs.cache / "images").iterdir()) == []


# ---------------------------------------------------------------- metadata per entrypoint kind


async def test_meta_for_services_image(inputs: Inputs) -> None:
    art = await build(DEMO_SPEC, inputs)
    assert set(art.meta) == META_FIELDS
    assert art.meta == json.loads(art.meta_path.read_text())
    assert art.meta_path == art.rootfs.parent / "mvm-meta.json"
    assert art.meta | {"spec_hash": "x", "verity": "v"} == {
        "name": "demo",
        "accessible": False,
        "sealed": True,
        "entrypointKind": "services",
        "init_system": "busybox",
        "expected_boot_ms": 300,
        "agent_binary": "real",
        "agent_path": "/usr/bin/mvm-agent",
        "rootless_entrypoint": True,
        "uids": {"agent": 990, "entrypoint": 1000, "services": {"web": 1001}},
        "seccomp_tier": "standard",
        "vmlinux_present": True,
        "initrd_present": False,
        "hypervisor": "auto",
        "builder": "offline",
        "vcpus": 1,
        "memory_mib": 256,
        "services": ["web"],
        "health_checks": ["web"],
        "spec_hash": "x",
        "verity": "v",
    }
    assert art.meta["spec_hash"] == hashlib.sha256(ib.spec_json(DEMO_SPEC)).hexdigest()
    # sealed: the dm-verity tree follows the filesystem in rootfs.ext4
    verity = art.meta["verity"]
    assert set(verity) == {"root_hash", "salt", "data_blocks", "hash_offset", "algorithm"}
    assert verity["hash_offset"] == verity["data_blocks"] * 4096 < art.rootfs.stat().st_size
    assert len(verity["root_hash"]) == 64 and verity["algorithm"] == "sha256"


async def test_meta_for_shell_image(inputs: Inputs) -> None:
    art = await build(ImageSpec(name="box", dev=True, vcpus=2, memory_mib=128), inputs)
    m = art.meta
    assert (m["entrypointKind"], m["accessible"], m["sealed"]) == ("shell", True, False)
    assert m["rootless_entrypoint"] is False and m["uids"] == {
        "agent": 990,
        "entrypoint": 0,
        "services": {},
    }
    assert (m["vcpus"], m["memory_mib"], m["services"]) == (2, 128, [])
    assert m["verity"] is None  # accessible (dev) images have no verified root
    env = cat(art.rootfs, "/etc/mvm/image.env")
    assert "MVM_ENTRYPOINT_KIND=shell\n" in env and "MVM_SEALED=0\n" in env
    assert "MVM_ENTRYPOINT_UID=0\n" in env
    assert "app" not in ls(art.rootfs, "/home")
    assert not any(line.startswith("app:") for line in cat(art.rootfs, "/etc/passwd").splitlines())


async def test_command_entrypoint_is_properly_quoted(inputs: Inputs, tmp_path: Path) -> None:
    argv = ("printf", "%s|", "a b", "it's", "$HOME", "`x`", "")
    spec = ImageSpec(name="cmd", command=argv, uids=Uids(entrypoint=1234))
    art = await build(spec, inputs)
    assert art.meta["entrypointKind"] == "command"
    assert art.meta["uids"] == {"agent": 990, "entrypoint": 1234, "services": {}}
    assert ls(art.rootfs, "/etc/mvm")["entrypoint"][0] == 0o100755
    script = tmp_path / "entrypoint"
    script.write_text(cat(art.rootfs, "/etc/mvm/entrypoint"))
    assert script.read_text().startswith("#!/bin/sh\nexec 'printf' ")
    out = subprocess.run(["sh", str(script)], capture_output=True, text=True, check=True)
    assert out.stdout == "a b|it's|$HOME|`x`||"
    assert "app:x:1234:1234:app:/home/app:/bin/sh" in cat(art.rootfs, "/etc/passwd")


async def test_service_prestart_env_and_restart(inputs: Inputs) -> None:
    spec = ImageSpec(
        name="svc",
        services={
            "api": Service(
                command="echo 'hi there'",
                pre_start="mkdir -p /run/api",
                env={"B": "two words", "A": "x'y"},
                restart="on-failure",
            ),
            "worker": Service(command="sleep 1", restart="never"),
        },
        health_checks={"api": HealthCheck("true", 7, 4)},
    )
    art = await build(spec, inputs)
    img = art.rootfs
    assert art.meta["services"] == ["api", "worker"] and art.meta["health_checks"] == ["api"]
    assert ls(img, "/etc/mvm/services/api")["prestart"][0] == 0o100755
    assert cat(img, "/etc/mvm/services/api/prestart").endswith("exec sh -c 'mkdir -p /run/api'\n")
    assert cat(img, "/etc/mvm/services/api/run").endswith("exec sh -c 'echo '\\''hi there'\\'''\n")
    assert cat(img, "/etc/mvm/services/api/env") == "A='x'\"'\"'y'\nB='two words'\n"
    assert cat(img, "/etc/mvm/services/api/restart") == "on-failure\n"
    assert cat(img, "/etc/mvm/services/worker/restart") == "never\n"
    assert (cat(img, "/etc/mvm/health/api/interval"), cat(img, "/etc/mvm/health/api/timeout")) == (
        "7\n",
        "4\n",
    )
    env = cat(img, "/etc/mvm/image.env")
    assert "MVM_SERVICES='api worker'\n" in env


# ---------------------------------------------------------------- packages and bad specs


async def test_host_path_packages_are_copied(inputs: Inputs, tmp_path: Path) -> None:
    tool = tmp_path / "opt" / "tool"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\necho tool\n")
    tool.chmod(0o755)
    tree = tmp_path / "share"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "data.txt").write_text("data")
    (tree / "link").symlink_to("sub/data.txt")
    spec = ImageSpec(name="pkgs", packages=("httpd", str(tool), str(tree)))
    art = await build(spec, inputs)
    img = art.rootfs
    assert cat(img, str(tool)) == "#!/bin/sh\necho tool\n"
    assert ls(img, str(tool.parent))["tool"] == (0o100755, 0, 0)
    assert cat(img, f"{tree}/sub/data.txt") == "data"
    assert ls(img, str(tree))["link"][0] & 0o170000 == 0o120000
    tool.write_text("#!/bin/sh\necho tool v2\n")
    assert (await build(spec, inputs)).key != art.key


@pytest.mark.parametrize(
    ("spec", "code", "needle"),
    [
        (ImageSpec(name="x", packages=("notanapplet",)), "E_SPEC_PACKAGE", "notanapplet"),
        (ImageSpec(name="x", packages=("/no/such/tool",)), "E_SPEC_PACKAGE", "/no/such/tool"),
        (ImageSpec(name="x", extra_files={"/init": "x"}), "E_SPEC_PATH", "/init"),
        (ImageSpec(name="x", extra_files={"/etc/mvm/image.env": "x"}), "E_SPEC_PATH", "reserved"),
        (ImageSpec(name="x", extra_files={'/a"b': "x"}), "E_SPEC_PATH", "plain absolute"),
        (ImageSpec(name="x", extra_files={"/etc": "x"}), "E_SPEC_PATH", "/etc"),
        (
            ImageSpec(name="x", services={"s": Service("true", env={"BAD-KEY": "v"})}),
            "E_SPEC_ENV",
            "BAD-KEY",
        ),
        (ImageSpec(name="x", services={"a b": Service("true")}), "E_SPEC_SERVICE", "a b"),
        (ImageSpec(name="x", uids=Uids(entrypoint=990)), "E_SPEC_UID", "990"),
        (ImageSpec(name="x", uids=Uids(entrypoint=70000)), "E_SPEC_UID", "70000"),
    ],
)
async def test_bad_specs_fail_with_codes(
    inputs: Inputs, spec: ImageSpec, code: str, needle: str
) -> None:
    with pytest.raises(ConfigError) as err:
        await build(spec, inputs)
    assert err.value.code == code
    assert needle in err.value.message
    images = inputs.cache / "images"
    assert not images.exists() or list(images.iterdir()) == []


async def test_dynamic_busybox_is_refused(inputs: Inputs) -> None:
    dynamic = Path(shutil.which("ls") or "/bin/ls")
    with pytest.raises(BuildError) as err:
        await ib.build_image(
            DEMO_SPEC, kernel=inputs.kernel, agent=inputs.agent, init=inputs.init,
            cache=inputs.cache, busybox=dynamic,
        )  # fmt: skip
    assert err.value.code == "E_BUSYBOX"


async def test_missing_inputs(inputs: Inputs, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as cerr:
        await ib.build_image(
            DEMO_SPEC, kernel=tmp_path / "nope", agent=inputs.agent, init=inputs.init
        )
    assert cerr.value.code == "E_KERNEL_MISSING"
    with pytest.raises(BuildError) as berr:
        await ib.build_image(
            DEMO_SPEC, kernel=inputs.kernel, agent=tmp_path / "nope", init=inputs.init
        )
    assert berr.value.code == "E_AGENT_MISSING"


def test_demo_specs() -> None:
    assert DEMO_SPEC.sealed and not DEMO_DEV_SPEC.sealed
    assert DEMO_DEV_SPEC.name == "demo-dev" and DEMO_DEV_SPEC.accessible
    assert attrs.evolve(DEMO_DEV_SPEC, name="demo", dev=False) == DEMO_SPEC
    web = DEMO_SPEC.services["web"]
    assert (web.command, web.restart) == ("httpd -f -p 80 -h /srv/www", "always")
    assert DEMO_SPEC.health_checks["web"].health_interval_secs == 2
    assert "<h1>Hello from mvm</h1>" in DEMO_SPEC.extra_files["/srv/www/index.html"]
    assert (DEMO_SPEC.vcpus, DEMO_SPEC.memory_mib, DEMO_SPEC.entrypoint_kind) == (
        1,
        256,
        "services",
    )
