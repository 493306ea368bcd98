"""The QEMU backend without booting a kernel: command lines, accelerator choice,
input checks, the KVM probe stub (run for real under TCG) and process handling
on plain host processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

from mvm.backends.abc.types import Accel, Drive, NetDevice, VmSpec
from mvm.backends.qemu import QemuBackend, QemuHandle
from mvm.backends.qemu.accel import (
    host_tsc_khz,
    resolve_accel,
    tsc_khz_from_cpuinfo,
    tsc_khz_from_kernel_log,
)
from mvm.backends.qemu.argv import build_argv, kernel_cmdline
from mvm.backends.qemu.endpoint import UnixSocketEndpoint, VsockEndpoint
from mvm.backends.vmm import kvm_probe
from mvm.backends.vmm.kvm_probe import PROBE_EXIT_STATUS, kvm_verdict, probe_argv, probe_stub
from mvm.engine.base.errors import ConfigError
from mvm.engine.base.process import process_start_time

TSC = 2445404


def _spec(tmp_path: Path, **kw: object) -> VmSpec:
    kernel = tmp_path / "vmlinux"
    rootfs = tmp_path / "rootfs.ext4"
    for f in (kernel, rootfs):
        if not f.exists():
            f.write_bytes(b"x")
    fields: dict[str, object] = {
        "name": "t",
        "kernel": kernel,
        "rootfs": rootfs,
        "run_dir": tmp_path / "run",
        **kw,
    }
    return VmSpec(**fields)  # type: ignore[arg-type]


def _after(argv: list[str], flag: str) -> list[str]:
    """Every value that follows ``flag`` in argv."""
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def test_tcg_argv(tmp_path: Path) -> None:
    spec = _spec(tmp_path, vcpus=2, memory_mib=384)
    argv, cmdline = build_argv(spec, accel=Accel.TCG, tsc_khz=TSC)
    assert argv[0] == "qemu-system-x86_64"
    machine = _after(argv, "-M")[0].split(",")
    assert machine[0] == "microvm"
    for option in ("x-option-roms=off", "pit=off", "pic=off", "isa-serial=on"):
        assert option in machine
    assert _after(argv, "-accel") == ["tcg"]
    assert _after(argv, "-cpu") == ["max"]
    assert _after(argv, "-m") == ["384"]
    assert _after(argv, "-smp") == ["2"]
    for flag in ("-nodefaults", "-no-user-config", "-no-reboot"):
        assert flag in argv
    assert _after(argv, "-display") == ["none"]
    assert _after(argv, "-kernel") == [str(spec.kernel)]
    assert _after(argv, "-append") == [cmdline]
    run = spec.run_dir
    assert f"unix:{run}/qmp.sock,server=on,wait=off" in _after(argv, "-qmp")
    assert _after(argv, "-pidfile") == [f"{run}/qemu.pid"]
    assert f"file,id=con,path={run}/console.log,append=on" in _after(argv, "-chardev")
    assert _after(argv, "-serial") == ["chardev:con"]
    assert "-incoming" not in argv
    words = cmdline.split()
    assert words[:5] == ["console=ttyS0", "reboot=t", "panic=-1", "init=/init", "root=/dev/vda"]
    assert f"tsc_early_khz={TSC}" in words
    assert "rootfstype=ext4" in words


def test_kvm_argv_has_host_cpu_and_no_tsc_hint(tmp_path: Path) -> None:
    argv, cmdline = build_argv(_spec(tmp_path), accel=Accel.KVM, tsc_khz=TSC)
    assert _after(argv, "-accel") == ["kvm"]
    assert _after(argv, "-cpu") == ["host"]
    assert "tsc_early_khz" not in cmdline


def test_tcg_without_tsc_and_unresolved_accel_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        build_argv(_spec(tmp_path), accel=Accel.TCG, tsc_khz=None)
    with pytest.raises(ValueError):
        build_argv(_spec(tmp_path), accel=Accel.AUTO, tsc_khz=TSC)


def test_rootfs_read_only_vs_writable(tmp_path: Path) -> None:
    ro_argv, ro_cmd = build_argv(_spec(tmp_path, rootfs_read_only=True), accel=Accel.TCG, tsc_khz=1)
    rw_argv, rw_cmd = build_argv(_spec(tmp_path), accel=Accel.TCG, tsc_khz=1)
    rootfs = tmp_path / "rootfs.ext4"
    assert _after(ro_argv, "-drive")[0] == f"id=root,file={rootfs},format=raw,if=none,readonly=on"
    assert _after(rw_argv, "-drive")[0] == f"id=root,file={rootfs},format=raw,if=none"
    assert " ro " in f" {ro_cmd} " and " rw " not in f" {ro_cmd} "
    assert " rw " in f" {rw_cmd} " and " ro " not in f" {rw_cmd} "
    assert _after(ro_argv, "-device")[0] == "virtio-blk-device,drive=root,serial=rootfs"


def test_extra_drives_in_order_with_escaped_paths(tmp_path: Path) -> None:
    drives = (
        Drive(tmp_path / "a,b.img", read_only=False, ident="vol-data"),
        Drive(tmp_path / "c.img", read_only=True, ident="x" * 30),
    )
    argv, _ = build_argv(_spec(tmp_path, drives=drives), accel=Accel.TCG, tsc_khz=1)
    assert _after(argv, "-drive")[1:] == [
        f"id=drive0,file={tmp_path}/a,,b.img,format=raw,if=none",
        f"id=drive1,file={tmp_path}/c.img,format=raw,if=none,readonly=on",
    ]
    blk = [d for d in _after(argv, "-device") if d.startswith("virtio-blk-device")]
    assert blk == [
        "virtio-blk-device,drive=root,serial=rootfs",
        "virtio-blk-device,drive=drive0,serial=vol-data",
        "virtio-blk-device,drive=drive1,serial=" + "x" * 20,
    ]


def test_net_devices(tmp_path: Path) -> None:
    nics = (NetDevice("mvm-tap0", "02:00:00:00:00:01"), NetDevice("mvm-tap1", "02:00:00:00:00:02"))
    argv, _ = build_argv(_spec(tmp_path, net=nics), accel=Accel.TCG, tsc_khz=1)
    assert _after(argv, "-netdev") == [
        "tap,id=net0,ifname=mvm-tap0,script=no,downscript=no",
        "tap,id=net1,ifname=mvm-tap1,script=no,downscript=no",
    ]
    assert [d for d in _after(argv, "-device") if d.startswith("virtio-net")] == [
        "virtio-net-device,netdev=net0,mac=02:00:00:00:00:01",
        "virtio-net-device,netdev=net1,mac=02:00:00:00:00:02",
    ]
    plain, _ = build_argv(_spec(tmp_path), accel=Accel.TCG, tsc_khz=1)
    assert "-netdev" not in plain


def test_incoming_maps_to_exec_cat_with_quoting(tmp_path: Path) -> None:
    snap = tmp_path / "my snap's.state"
    argv, _ = build_argv(_spec(tmp_path, incoming=snap), accel=Accel.TCG, tsc_khz=1)
    (value,) = _after(argv, "-incoming")
    assert value.startswith("exec:cat ")
    out = subprocess.run(
        ["sh", "-c", "printf '%s' " + value.removeprefix("exec:cat ")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == str(snap)  # the shell QEMU runs sees exactly one argument


def test_virtio_serial_vs_vsock(tmp_path: Path) -> None:
    serial, serial_cmd = build_argv(_spec(tmp_path), accel=Accel.TCG, tsc_khz=1)
    run = tmp_path / "run"
    assert "virtio-serial-device" in _after(serial, "-device")
    assert "virtserialport,chardev=agent,name=mvm.agent" in _after(serial, "-device")
    assert f"socket,id=agent,path={run}/agent.sock,server=on,wait=off" in _after(serial, "-chardev")
    assert not any("vhost-vsock" in a for a in serial)
    assert "mvm.agent=serial:mvm.agent" in serial_cmd.split()

    vsock, vsock_cmd = build_argv(_spec(tmp_path), accel=Accel.KVM, tsc_khz=1, vsock_cid=42)
    assert "vhost-vsock-device,guest-cid=42" in _after(vsock, "-device")
    assert "virtio-serial-device" not in vsock
    assert not any("agent.sock" in a for a in vsock)
    assert "mvm.agent=vsock:5252" in vsock_cmd.split()


def test_spec_kernel_args_come_last(tmp_path: Path) -> None:
    spec = _spec(tmp_path, kernel_args=("mvm.hostname=web", "mvm.volumes=a:/data"))
    cmd = kernel_cmdline(spec, Accel.TCG, tsc_khz=7, vsock=False)
    assert cmd.split()[-2:] == ["mvm.hostname=web", "mvm.volumes=a:/data"]


# -- prepare / start input checks ----------------------------------------------------------


def test_prepare_builds_a_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MVM_ACCEL", "tcg")
    spec = _spec(tmp_path, rootfs_read_only=True)
    plan = QemuBackend(vsock=False).prepare(spec)
    run = spec.run_dir
    assert plan.backend == "qemu"
    assert plan.accel is Accel.TCG
    assert (plan.control_socket, plan.agent_socket, plan.pid_file, plan.console_log) == (
        run / "qmp.sock",
        run / "agent.sock",
        run / "qemu.pid",
        run / "console.log",
    )
    assert f"tsc_early_khz={host_tsc_khz()}" in plan.kernel_cmdline
    assert plan.kernel_cmdline in plan.argv
    assert not run.exists()  # prepare is pure: nothing created yet
    endpoint = QemuBackend().agent_endpoint(plan)
    assert endpoint == UnixSocketEndpoint(run / "agent.sock")


def test_prepare_with_vsock_dials_the_guest_cid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MVM_ACCEL", "kvm")
    backend = QemuBackend(vsock=True)
    plan = backend.prepare(_spec(tmp_path))
    endpoint = backend.agent_endpoint(plan)
    assert isinstance(endpoint, VsockEndpoint)
    assert endpoint.port == 5252 and endpoint.cid >= 3
    assert f"vhost-vsock-device,guest-cid={endpoint.cid}" in plan.argv
    # Stable per run directory, different across VMs.
    assert backend.prepare(_spec(tmp_path)).agent_socket == plan.agent_socket
    other = backend.prepare(_spec(tmp_path, run_dir=tmp_path / "run2"))
    assert other.agent_socket != plan.agent_socket


def test_restore_keeps_the_snapshots_agent_channel_with_a_new_cid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clone's device model follows its snapshot (vsock or serial), whatever the
    host would pick for a new VM; a vsock clone gets its own CID from its run dir."""
    monkeypatch.setenv("MVM_ACCEL", "kvm")
    state = tmp_path / "state.bin"
    state.write_bytes(b"x")
    source = QemuBackend(vsock=True).prepare(_spec(tmp_path, run_dir=tmp_path / "src"))
    clone_spec = _spec(tmp_path, run_dir=tmp_path / "clone", incoming=state, agent_vsock=True)
    clone = QemuBackend(vsock=True).prepare(clone_spec)
    src_cid = QemuBackend().agent_endpoint(source)
    new_cid = QemuBackend().agent_endpoint(clone)
    assert isinstance(src_cid, VsockEndpoint) and isinstance(new_cid, VsockEndpoint)
    assert new_cid.cid != src_cid.cid
    assert f"vhost-vsock-device,guest-cid={new_cid.cid}" in clone.argv
    serial = QemuBackend(vsock=True).prepare(attrs.evolve(clone_spec, agent_vsock=False))
    assert not any("vhost-vsock" in arg for arg in serial.argv)
    assert serial.agent_socket == tmp_path / "clone" / "agent.sock"
    with pytest.raises(ConfigError) as err:
        QemuBackend(vsock=False).prepare(clone_spec)
    assert err.value.code == "E_SNAPSHOT_TRANSPORT"


@pytest.mark.parametrize(
    ("missing", "code"), [("vmlinux", "E_KERNEL_MISSING"), ("rootfs.ext4", "E_ROOTFS_MISSING")]
)
def test_prepare_refuses_missing_inputs(tmp_path: Path, missing: str, code: str) -> None:
    spec = _spec(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(ConfigError) as err:
        QemuBackend().prepare(spec)
    assert err.value.code == code
    assert str(tmp_path / missing) in err.value.one_line()


async def test_start_refuses_missing_kernel_before_spawning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MVM_ACCEL", "tcg")
    spec = _spec(tmp_path)
    backend = QemuBackend(qemu=str(tmp_path / "must-not-run"))
    plan = backend.prepare(spec)
    (tmp_path / "vmlinux").unlink()
    with pytest.raises(ConfigError) as err:
        await backend.start(plan)
    assert err.value.code == "E_KERNEL_MISSING"
    assert not spec.run_dir.exists()  # no log, no socket: nothing was spawned


async def test_start_reports_the_last_stderr_line_of_a_vmm_that_dies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "fake-qemu"
    fake.write_text("#!/bin/sh\necho starting >&2\necho 'could not open kernel file' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("MVM_ACCEL", "tcg")
    backend = QemuBackend(qemu=str(fake))
    plan = backend.prepare(_spec(tmp_path))
    from mvm.engine.base.errors import BackendError

    with pytest.raises(BackendError) as err:
        await backend.start(plan)
    assert err.value.code == "E_VMM_START"
    assert "could not open kernel file" in err.value.message
    assert "status 1" in err.value.message


# -- accelerator ---------------------------------------------------------------------------


def test_env_forces_accel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MVM_ACCEL", "kvm")
    assert resolve_accel(Accel.AUTO) is Accel.KVM
    assert resolve_accel(Accel.TCG) is Accel.KVM
    monkeypatch.setenv("MVM_ACCEL", "tcg")
    assert resolve_accel(Accel.AUTO) is Accel.TCG
    monkeypatch.setenv("MVM_ACCEL", "fast")
    with pytest.raises(ConfigError) as err:
        resolve_accel(Accel.AUTO)
    assert err.value.code == "E_ACCEL"
    monkeypatch.delenv("MVM_ACCEL")
    assert resolve_accel(Accel.TCG) is Accel.TCG


def test_auto_uses_the_verdict_cached_for_this_boot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MVM_ACCEL", raising=False)
    monkeypatch.setenv("MVM_CACHE", str(tmp_path))
    calls: list[int] = []

    def fake_probe() -> tuple[bool, str]:
        calls.append(1)
        return True, "probe said yes"

    monkeypatch.setattr(kvm_probe, "run_kvm_probe", fake_probe)
    assert resolve_accel(Accel.AUTO) is Accel.KVM
    assert resolve_accel(Accel.AUTO) is Accel.KVM
    assert calls == [1]  # probed once, then read from the cache
    (cached,) = (tmp_path / "accel").iterdir()
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert boot_id in cached.name
    assert json.loads(cached.read_text()) == {"kvm": True, "reason": "probe said yes"}
    cached.write_text(json.dumps({"kvm": False, "reason": "edited"}))
    assert resolve_accel(Accel.AUTO) is Accel.TCG
    assert kvm_verdict(refresh=True) == (True, "probe said yes")


def test_tsc_from_kernel_log_prefers_refined_calibration() -> None:
    log = (
        "[    0.000032] tsc: Detected 2445.404 MHz processor\n"
        "[    1.2] tsc: Refined TSC clocksource calibration: 2445.399 MHz\n"
    )
    assert tsc_khz_from_kernel_log(log) == 2445399
    assert tsc_khz_from_kernel_log("[0.1] tsc: Detected 2445.404 MHz processor") == 2445404
    assert tsc_khz_from_kernel_log("nothing here") is None


def test_tsc_from_cpuinfo_prefers_nominal_ghz() -> None:
    intel = "model name\t: Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz\ncpu MHz\t\t: 1200.000\n"
    assert tsc_khz_from_cpuinfo(intel) == 2400000
    amd = "model name\t: AMD EPYC\ncpu MHz\t\t: 2445.404\n"
    assert tsc_khz_from_cpuinfo(amd) == 2445404
    assert tsc_khz_from_cpuinfo("") is None


def test_host_tsc_is_plausible() -> None:
    assert 200_000 < host_tsc_khz() < 10_000_000


def test_host_tsc_is_remembered_per_host_boot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A detached boot's supervisor is a new process: it reads the kHz the first one
    found (no dmesg fork) while the host's boot id is the same, and looks again after."""
    from mvm.backends.qemu import accel

    monkeypatch.setenv("MVM_CACHE", str(tmp_path))
    boot_id = tmp_path / "boot_id"
    boot_id.write_text("boot-1\n")
    monkeypatch.setattr(accel, "_BOOT_ID", boot_id)
    monkeypatch.setattr(accel, "_kernel_log", lambda: "[0.2] tsc: Detected 2000.000 MHz")
    monkeypatch.setattr(accel, "Path", _NoSysfs)  # the sysfs value would win
    assert accel._remembered_khz() is None
    accel.host_tsc_khz.cache_clear()
    assert accel.host_tsc_khz() == 2_000_000
    assert (tmp_path / "host" / "tsc-khz").read_text() == "boot-1 2000000\n"
    monkeypatch.setattr(accel, "_kernel_log", lambda: "")  # no second look this boot
    accel.host_tsc_khz.cache_clear()
    assert accel.host_tsc_khz() == 2_000_000
    boot_id.write_text("boot-2\n")
    monkeypatch.setattr(accel, "_kernel_log", lambda: "[0.2] tsc: Detected 3000.000 MHz")
    accel.host_tsc_khz.cache_clear()
    assert accel.host_tsc_khz() == 3_000_000
    accel.host_tsc_khz.cache_clear()


class _NoSysfs(type(Path())):  # type: ignore[misc]
    """Path, except that /sys/devices/system/cpu/cpu0/tsc_freq_khz is absent."""

    def read_text(self, *args: Any, **kwargs: Any) -> str:
        if str(self).startswith("/sys/devices/system/cpu/"):
            raise FileNotFoundError(str(self))
        return super().read_text(*args, **kwargs)


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU")
def test_probe_stub_really_boots_and_exits_with_the_known_status(tmp_path: Path) -> None:
    """The same stub and flags as the KVM probe, but under TCG (which works everywhere)."""
    stub = tmp_path / "probe.elf"
    stub.write_bytes(probe_stub())
    argv = probe_argv(stub)
    argv[argv.index("-accel") + 1] = "tcg"
    argv[argv.index("-cpu") + 1] = "max"
    out = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    assert out.returncode == PROBE_EXIT_STATUS, out.stderr


# -- process handling on plain host processes ----------------------------------------------


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "30"], start_new_session=True)


async def test_stop_of_an_adopted_vmm_without_qmp_terminates_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MVM_ACCEL", "tcg")
    backend = QemuBackend()
    plan = backend.prepare(_spec(tmp_path))
    plan.run_dir.mkdir()
    (plan.run_dir / "qmp.sock").write_text("")  # a stale socket file, nobody listening
    plan.pid_file.write_text("1")
    proc = _sleeper()
    try:
        handle = backend.attach(plan, proc.pid)
        assert handle.proc is None and handle.alive()
        status = await backend.stop(handle, grace=2)
        assert status == -1  # not our child (as far as the handle knows): status unknown
        assert proc.wait(timeout=5) == -signal.SIGTERM
        assert sorted(p.name for p in plan.run_dir.iterdir()) == []
    finally:
        proc.kill()
        proc.wait()


async def test_a_recycled_pid_is_never_signalled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MVM_ACCEL", "tcg")
    backend = QemuBackend()
    plan = backend.prepare(_spec(tmp_path))
    proc = _sleeper()
    try:
        start = process_start_time(proc.pid)
        assert start is not None
        handle = QemuHandle(proc.pid, plan, start - 1, None)  # recorded for an older process
        assert not handle.alive()
        assert await backend.wait(handle) == -1
        await backend.stop(handle, grace=0.1)
        assert proc.poll() is None  # still running: it was not ours to kill
    finally:
        proc.kill()
        proc.wait()


async def test_stop_escalates_to_sigkill_after_grace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MVM_ACCEL", "tcg")
    backend = QemuBackend()
    plan = backend.prepare(_spec(tmp_path))
    proc = subprocess.Popen(
        ["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"],
        start_new_session=True,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"  # SIGTERM is ignored from here on
        handle = QemuHandle(proc.pid, plan, process_start_time(proc.pid), proc)
        assert await backend.stop(handle, grace=0.3) == -signal.SIGKILL
        assert not os.path.exists(f"/proc/{proc.pid}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_vsock_dial_is_bounded_by_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    """No guest listens on this CID: connect keeps retrying (or reports missing vsock
    support at once) and never returns a stream."""
    from mvm.engine.base.errors import BackendError

    endpoint = VsockEndpoint(cid=0x7FFFFF00, port=5252)
    t0 = anyio.current_time()
    with anyio.move_on_after(0.3):
        try:
            stream = await endpoint.connect()
        except BackendError as exc:
            assert exc.code == "E_VSOCK"
        else:
            await stream.aclose()
            pytest.fail("connected to a CID nobody listens on")
    assert anyio.current_time() - t0 < 2


async def test_unix_endpoint_retries_until_the_socket_appears(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"

    async def serve_later() -> None:
        await anyio.sleep(0.2)
        listener = await anyio.create_unix_listener(path)
        async with listener:
            conn = await listener.accept()
            async with conn:
                await conn.send(b"hello")

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve_later)
        with anyio.fail_after(5):
            stream = await UnixSocketEndpoint(path).connect()
            async with stream:
                assert await stream.receive() == b"hello"
