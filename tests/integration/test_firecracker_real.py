"""The Firecracker backend against the real static Firecracker 1.12.1 binary and the real kernel.

What these hosts allow (measured): ``/dev/kvm`` is nested, but Firecracker's
``InstanceStart`` succeeds and the guest kernel starts (slowly), so boot, pause,
resume, snapshot create and snapshot load into a second VMM are all exercised
for real. The guest does not reach its agent within a test's time here, so the
hybrid vsock test checks the "guest not listening yet" path against the real
VMM. Every error path goes through the real API: Firecracker's own
``fault_message`` must reach the user with a stable code.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from mvm.backends.abc.types import Drive, LaunchPlan, VmSpec
from mvm.backends.firecracker import (
    ApiCall,
    FirecrackerApi,
    FirecrackerApiError,
    FirecrackerBackend,
    FirecrackerHandle,
    kvm_status,
)
from mvm.backends.firecracker.fetch import FetchError, ensure_firecracker
from mvm.backends.kernel_build import ensure_kernel
from mvm.backends.vmm.hybrid_vsock import HybridVsockEndpoint
from mvm.engine.base.errors import BackendError, ConfigError

GRACE = 0.2  # the guest is far from handling Ctrl-Alt-Del this early: don't wait long


@pytest.fixture(scope="module")
def firecracker() -> Path:
    try:
        return ensure_firecracker()
    except FetchError as exc:
        pytest.skip(f"no Firecracker binary: {exc.one_line()}")


@pytest.fixture(scope="module")
def kernel() -> Path:
    import trio

    return trio.run(ensure_kernel)


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("fcroot")
    tree = base / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("fc-test\n")
    image = base / "rootfs.ext4"
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-d", str(tree), str(image), "8M"],
        check=True,
        capture_output=True,
    )
    return image


@pytest.fixture
def backend(firecracker: Path) -> FirecrackerBackend:
    if not kvm_status().usable:
        pytest.skip(f"Firecracker needs KVM: {kvm_status().reason}")
    return FirecrackerBackend(binary=firecracker)


@pytest.fixture
def run_root() -> Iterator[Path]:
    # Short: Unix socket paths must fit in 108 bytes.
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="fct-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _spec(kernel: Path, rootfs: Path, run_dir: Path, **kw: object) -> VmSpec:
    args: dict[str, object] = {
        "name": run_dir.name,
        "kernel": kernel,
        "rootfs": rootfs,
        "run_dir": run_dir,
        "memory_mib": 64,
    }
    args.update(kw)
    return VmSpec(**args)  # type: ignore[arg-type]


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _assert_gone(handle: FirecrackerHandle) -> None:
    assert not _pid_alive(handle.pid), f"firecracker {handle.pid} still running"
    left = sorted(p.name for p in handle.plan.run_dir.iterdir())
    assert not [n for n in left if n.endswith((".sock", ".pid"))], left


async def _state(plan: LaunchPlan) -> str:
    async with FirecrackerApi.open(plan.control_socket) as api:
        return await api.state()


@pytest.fixture
async def started(
    backend: FirecrackerBackend, kernel: Path, rootfs: Path, run_root: Path
) -> AsyncIterator[FirecrackerHandle]:
    plan = backend.prepare(_spec(kernel, rootfs, run_root / "src"))
    handle = await backend.start(plan)
    try:
        yield handle
    finally:
        await backend.stop(handle, grace=GRACE)
        _assert_gone(handle)


# -- the happy path ------------------------------------------------------------------------


async def test_boot_pause_resume_snapshot_and_load_into_a_new_vmm(
    backend: FirecrackerBackend,
    kernel: Path,
    rootfs: Path,
    run_root: Path,
    started: FirecrackerHandle,
) -> None:
    plan = started.plan
    assert await _state(plan) == "Running"
    assert plan.pid_file.read_text().strip() == str(started.pid)
    assert (plan.run_dir / "vsock.sock").exists()  # relative uds_path, resolved in run_dir
    assert "Running Firecracker v1.12.1" in plan.console_log.read_text()
    assert "Put request" in (plan.run_dir / "firecracker.log").read_text()  # logger took effect

    await backend.pause(started)
    assert await _state(plan) == "Paused"
    await backend.resume(started)
    assert await _state(plan) == "Running"

    snap = run_root / "snaps" / "base"
    await backend.snapshot(started, snap)
    assert await _state(plan) == "Running", "a running VM is resumed after its snapshot"
    assert snap.stat().st_size > 0
    assert Path(f"{snap}.mem").stat().st_size == 64 * 1024 * 1024
    assert not list(snap.parent.glob("*.tmp"))

    # Load into a second VMM while the source still runs: its vsock socket is its own.
    clone_plan = backend.prepare(_spec(kernel, rootfs, run_root / "clone", incoming=snap))
    assert [c.path for c in backend.api_calls(clone_plan)] == [
        "/logger",
        "/metrics",
        "/snapshot/load",
    ]
    clone = await backend.start(clone_plan)
    try:
        assert await _state(clone_plan) == "Running"
        assert (run_root / "clone" / "vsock.sock").exists()
        assert await _state(plan) == "Running"
        async with FirecrackerApi.open(clone_plan.control_socket) as api:
            config = await api.get("/vm/config")
        assert config["machine-config"]["mem_size_mib"] == 64
        assert [d["drive_id"] for d in config["drives"]] == ["rootfs"]
    finally:
        status = await backend.stop(clone, grace=GRACE)
    assert status == -9  # guest ignored Ctrl-Alt-Del this early, so it was killed
    _assert_gone(clone)


async def test_adopted_vmm_is_stopped_by_pid_and_start_time(
    backend: FirecrackerBackend, kernel: Path, rootfs: Path, run_root: Path
) -> None:
    plan = backend.prepare(_spec(kernel, rootfs, run_root / "adopt"))
    own = await backend.start(plan)
    adopted = backend.attach(plan, own.pid)
    assert adopted.proc is None and adopted.start_time == own.start_time and adopted.alive()
    assert await backend.stop(adopted, grace=GRACE) == -1  # not our child: status unknown
    assert own.proc is not None
    own.proc.wait(timeout=5)  # we are its parent after all: reap it for the zombie check
    _assert_gone(own)


async def test_hybrid_vsock_retries_while_the_guest_agent_is_absent(
    backend: FirecrackerBackend, started: FirecrackerHandle
) -> None:
    """The real VMM accepts CONNECT and closes (nothing listens in the guest): keep trying."""
    endpoint = backend.agent_endpoint(started.plan)
    assert isinstance(endpoint, HybridVsockEndpoint)
    with anyio.move_on_after(0.5) as scope:
        await endpoint.connect()
    assert scope.cancelled_caught, "connected to an agent that cannot be running yet"
    assert started.alive()


# -- error paths -------------------------------------------------------------------------


async def test_bad_kernel_path_surfaces_firecrackers_fault(
    backend: FirecrackerBackend, kernel: Path, rootfs: Path, run_root: Path
) -> None:
    doomed = run_root / "vmlinux"
    shutil.copy(kernel, doomed)
    plan = backend.prepare(_spec(doomed, rootfs, run_root / "badk"))
    doomed.unlink()  # gone between prepare and start: only Firecracker can notice
    with pytest.raises(FirecrackerApiError) as err:
        await backend.start(plan)
    assert err.value.code == "E_FC_API"
    assert err.value.path == "/boot-source" and err.value.status == 400
    assert "kernel file cannot be opened" in err.value.fault
    assert "/boot-source" in err.value.one_line()
    pid = int(next(iter(_firecracker_pids(plan)), 0))
    assert pid == 0, "the failed VMM was left running"
    assert not (run_root / "badk" / "fc.sock").exists()


def _firecracker_pids(plan: LaunchPlan) -> list[str]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(plan.control_socket).encode() in (proc / "cmdline").read_bytes():
                    out.append(proc.name)
            except OSError:
                pass
    return [p for p in out if _pid_alive(int(p))]


async def test_drive_errors(
    backend: FirecrackerBackend, kernel: Path, rootfs: Path, run_root: Path
) -> None:
    # Same id twice in a spec: refused before anything starts (Firecracker would replace).
    dup = (Drive(rootfs, read_only=True, ident="data"), Drive(rootfs, read_only=True, ident="data"))
    with pytest.raises(ConfigError) as cfg_err:
        backend.prepare(_spec(kernel, rootfs, run_root / "dup", drives=dup))
    assert cfg_err.value.code == "E_FC_DRIVE_ID"
    assert not (run_root / "dup").exists()

    handle = await backend.spawn(backend.prepare(_spec(kernel, rootfs, run_root / "drv")))
    try:
        async with FirecrackerApi.open(handle.plan.control_socket) as api:
            # Why the spec check exists: the real VMM silently replaces a reused id.
            body = {"drive_id": "data", "is_root_device": False, "is_read_only": True}
            await api.put("/drives/data", {**body, "path_on_host": str(kernel)})
            await api.put("/drives/data", {**body, "path_on_host": str(rootfs)})
            drives = (await api.get("/vm/config"))["drives"]
            assert [(d["drive_id"], d["path_on_host"]) for d in drives] == [("data", str(rootfs))]
        faults = {}
        for name, call in {
            "second_root": ApiCall(
                "PUT",
                "/drives/other",
                {
                    "drive_id": "other",
                    "path_on_host": str(rootfs),
                    "is_root_device": True,
                    "is_read_only": True,
                },
            ),
            "id_mismatch": ApiCall(
                "PUT",
                "/drives/x",
                {
                    "drive_id": "y",
                    "path_on_host": str(rootfs),
                    "is_root_device": False,
                    "is_read_only": True,
                },
            ),
            "missing_file": ApiCall(
                "PUT",
                "/drives/z",
                {
                    "drive_id": "z",
                    "path_on_host": str(run_root / "absent.img"),
                    "is_root_device": False,
                    "is_read_only": True,
                },
            ),
            "unknown_field": ApiCall(
                "PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 64, "bogus": 1}
            ),
        }.items():
            if name == "second_root":
                await backend.configure(handle, (ApiCall(
                    "PUT", "/drives/rootfs",
                    {"drive_id": "rootfs", "path_on_host": str(rootfs), "is_root_device": True,
                     "is_read_only": True},
                ),))  # fmt: skip
            with pytest.raises(FirecrackerApiError) as err:
                await backend.configure(handle, (call,))
            assert err.value.code == "E_FC_API" and err.value.path == call.path
            faults[name] = err.value.fault
        assert "A root block device already exists" in faults["second_root"]
        assert "does not match" in faults["id_mismatch"]
        assert "No such file or directory" in faults["missing_file"]
        assert "unknown field `bogus`" in faults["unknown_field"]
        assert handle.alive(), "configuration faults must not kill the VMM"
    finally:
        await backend.stop(handle, grace=GRACE)
    _assert_gone(handle)


async def test_api_misuse_before_start(
    backend: FirecrackerBackend, kernel: Path, rootfs: Path, run_root: Path
) -> None:
    handle = await backend.spawn(backend.prepare(_spec(kernel, rootfs, run_root / "early")))
    try:
        for action in (backend.pause, backend.resume):
            with pytest.raises(FirecrackerApiError) as err:
                await action(handle)
            assert err.value.path == "/vm"
            assert "not supported before starting the microVM" in err.value.fault
        with pytest.raises(FirecrackerApiError) as snap_err:
            await backend.snapshot(handle, run_root / "early-snap")
        assert snap_err.value.path == "/snapshot/create"
        assert "not supported before starting the microVM" in snap_err.value.fault
        assert not list(run_root.glob("early-snap*")), "a failed snapshot left files"
    finally:
        # Never started: no Ctrl-Alt-Del is sent, the process is killed at once.
        await backend.stop(handle, grace=GRACE)
    _assert_gone(handle)


async def test_snapshot_load_of_a_corrupt_file_is_coded_and_leaves_nothing(
    backend: FirecrackerBackend, kernel: Path, rootfs: Path, run_root: Path
) -> None:
    snap = run_root / "junk"
    snap.write_bytes(b"not a snapshot")
    Path(f"{snap}.mem").write_bytes(b"\0" * 4096)
    plan = backend.prepare(_spec(kernel, rootfs, run_root / "junkvm", incoming=snap))
    with pytest.raises(BackendError) as err:
        await backend.start(plan)
    # Firecracker answers the fault and then exits: either way it is coded and nothing stays.
    assert err.value.code in ("E_FC_API", "E_VMM_START")
    assert "snapshot" in err.value.message.lower()
    assert not _firecracker_pids(plan)
    assert not (run_root / "junkvm" / "fc.sock").exists()


async def test_missing_binary(
    firecracker: Path, kernel: Path, rootfs: Path, run_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MVM_FIRECRACKER", str(run_root / "no-firecracker"))
    env_backend = FirecrackerBackend()
    avail = env_backend.availability()
    assert not avail.ok and "no-firecracker" in avail.reason
    with pytest.raises(BackendError) as err:
        env_backend.prepare(_spec(kernel, rootfs, run_root / "nobin"))
    assert err.value.code == "E_FC_BINARY"

    # Present at prepare, gone at start.
    copy = run_root / "firecracker"
    shutil.copy(firecracker, copy)
    backend = FirecrackerBackend(binary=copy)
    plan = backend.prepare(_spec(kernel, rootfs, run_root / "vanished"))
    copy.unlink()
    with pytest.raises(BackendError) as start_err:
        await backend.start(plan)
    assert start_err.value.code == "E_FC_BINARY"
    assert "No such file" in start_err.value.message


async def test_cancelled_start_leaves_no_process(
    backend: FirecrackerBackend, kernel: Path, rootfs: Path, run_root: Path
) -> None:
    plan = backend.prepare(_spec(kernel, rootfs, run_root / "cancel"))
    handle = None
    with anyio.move_on_after(0.02) as scope:
        handle = await backend.start(plan)
    if handle is not None:
        await backend.stop(handle, grace=0)
    assert scope.cancelled_caught, "start finished in 20 ms: the cancel point was not tested"
    assert not _firecracker_pids(plan)
    assert not (run_root / "cancel" / "fc.sock").exists()
