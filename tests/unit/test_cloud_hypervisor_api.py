"""Cloud Hypervisor backend against a replaying stand-in VMM (no CH binary exists for these hosts).

Neither Debian 12 nor PyPI ships ``cloud-hypervisor``, so the backend is tested
against a real process that plays the VMM: it is started by the backend exactly
as ``cloud-hypervisor`` would be (``--api-socket path=...``), serves HTTP on that
Unix socket, and replays request/response transcripts written from Cloud
Hypervisor's REST API (``/api/v1/vm.create`` ... ``vmm.shutdown``), answering
599 to any request that differs from the transcript. Each test then checks the
requests the stand-in really received, in order.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from mvm.backends.abc.types import Accel, Drive, NetDevice, VmSpec
from mvm.backends.cloud_hypervisor import (
    ChApiError,
    CloudHypervisorBackend,
    cmdline,
    vm_config,
)
from mvm.backends.cloud_hypervisor.api import error_detail
from mvm.backends.vmm.hybrid_vsock import HybridVsockEndpoint
from mvm.engine.base.errors import BackendError, ConfigError

STUB = r"""#!{python}
import http.server, json, os, socketserver, sys

args = sys.argv[1:]
sock = args[args.index("--api-socket") + 1].removeprefix("path=")
script = json.load(open(os.environ["CH_STUB_TRANSCRIPT"]))
seen = os.environ["CH_STUB_SEEN"]


class Handler(http.server.BaseHTTPRequestHandler):
    def handle_one(self):
        size = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(size)) if size else None
        exit_after = False
        if self.path == "/api/v1/vmm.ping":
            status, payload = 200, {{"version": "v41.0-stub", "pid": os.getpid()}}
        else:
            with open(seen, "a") as log:
                log.write(json.dumps([self.command, self.path, body]) + "\n")
            if not script:
                status, payload = 599, "stub: unexpected request"
            else:
                step = script.pop(0)
                if step["request"] != [self.command, self.path, body]:
                    status, payload = 599, "stub: expected " + json.dumps(step["request"])
                else:
                    status, payload = step["status"], step.get("body")
                    exit_after = self.path == "/api/v1/vmm.shutdown"
        data = b"" if payload is None else (
            payload.encode() if isinstance(payload, str) else json.dumps(payload).encode())
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        if data:
            self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()
        if exit_after:
            os._exit(0)

    do_GET = do_PUT = handle_one

    def log_message(self, *args):
        pass


class Server(socketserver.UnixStreamServer):
    def get_request(self):
        conn, _ = self.socket.accept()
        return conn, ("stub", 0)


Server(sock, Handler).serve_forever()
"""


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name in ("vmlinux", "rootfs.ext4", "data.img"):
        out[name] = tmp_path / name
        out[name].write_bytes(b"\0" * 16)
    return out


@pytest.fixture
def stub(tmp_path: Path) -> Path:
    path = tmp_path / "cloud-hypervisor"
    path.write_text(STUB.format(python=sys.executable))
    path.chmod(0o755)
    return path


def _spec(files: dict[str, Path], run_dir: Path, **kw: Any) -> VmSpec:
    args: dict[str, Any] = {
        "name": "ch1",
        "kernel": files["vmlinux"],
        "rootfs": files["rootfs.ext4"],
        "run_dir": run_dir,
        "memory_mib": 128,
    }
    args.update(kw)
    return VmSpec(**args)


def _script(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, steps: list[dict[str, Any]]) -> Path:
    transcript = tmp_path / "transcript.json"
    transcript.write_text(json.dumps(steps))
    seen = tmp_path / "seen.jsonl"
    seen.unlink(missing_ok=True)
    monkeypatch.setenv("CH_STUB_TRANSCRIPT", str(transcript))
    monkeypatch.setenv("CH_STUB_SEEN", str(seen))
    return seen


def _seen(path: Path) -> list[list[Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _step(
    method: str, endpoint: str, body: Any = None, status: int = 204, reply: Any = None
) -> dict[str, Any]:
    return {"request": [method, "/api/v1/" + endpoint, body], "status": status, "body": reply}


def _info(state: str) -> dict[str, Any]:
    return _step("GET", "vm.info", status=200, reply={"state": state, "config": {}})


# -- pure ----------------------------------------------------------------------------------


def test_vm_config_payload(files: dict[str, Path], tmp_path: Path) -> None:
    spec = _spec(
        files,
        tmp_path / "run",
        vcpus=2,
        drives=(Drive(files["data.img"], read_only=True, ident="data"),),
        net=(NetDevice("mvmtap1", "02:ch:00:00:00:01"),),
        kernel_args=("quiet",),
        rootfs_read_only=True,
    )
    assert vm_config(spec) == {
        "cpus": {"boot_vcpus": 2, "max_vcpus": 2},
        "memory": {"size": 128 * 1024 * 1024},
        "payload": {"kernel": str(files["vmlinux"]), "cmdline": cmdline(spec)},
        "disks": [
            {"path": str(files["rootfs.ext4"]), "readonly": True},
            {"path": str(files["data.img"]), "readonly": True},
        ],
        "vsock": {"cid": 3, "socket": str(tmp_path / "run" / "vsock.sock")},
        "serial": {"mode": "File", "file": str(tmp_path / "run" / "console.log")},
        "console": {"mode": "Off"},
        "rng": {"src": "/dev/urandom"},
        "net": [{"tap": "mvmtap1", "mac": "02:ch:00:00:00:01"}],
    }
    # CH does not add root= itself (Firecracker does): it must be on the command line.
    assert cmdline(spec).split()[-5:] == [
        "root=/dev/vda", "ro", "rootfstype=ext4", "mvm.agent=vsock:5252", "quiet"
    ]  # fmt: skip
    assert "net" not in vm_config(_spec(files, tmp_path / "run"))
    with pytest.raises(ConfigError) as err:
        vm_config(_spec(files, tmp_path / "run", vcpus=0))
    assert err.value.code == "E_CH_VCPUS"


def test_error_detail_formats() -> None:
    chain = ["Error from API", "The VM could not boot", "Kernel not found"]
    assert error_detail(httpx.Response(500, json=chain)) == (
        "Error from API: The VM could not boot: Kernel not found"
    )
    assert error_detail(httpx.Response(400, text="VM is not created\n")) == "VM is not created"
    assert error_detail(httpx.Response(500, json={"error": "x"})) == "x"
    assert error_detail(httpx.Response(404)) == "Not Found"


# -- against the stand-in VMM --------------------------------------------------------------


async def test_lifecycle_requests_in_order(
    files: dict[str, Path], stub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    spec = _spec(files, run)
    snap = tmp_path / "snaps" / "one"
    steps = [
        _step("PUT", "vm.create", vm_config(spec)),
        _step("PUT", "vm.boot"),
        _step("PUT", "vm.pause"),
        _step("PUT", "vm.resume"),
        _info("Running"),
        _step("PUT", "vm.pause"),
        _step("PUT", "vm.snapshot", {"destination_url": snap.as_uri()}),
        _step("PUT", "vm.resume"),
        _info("Running"),
        _step("PUT", "vm.power-button"),
        _info("Shutdown"),
        _step("PUT", "vmm.shutdown"),
    ]
    seen = _script(monkeypatch, tmp_path, steps)
    backend = CloudHypervisorBackend(binary=stub, check_kvm=False)
    plan = backend.prepare(spec)
    assert plan.argv[1:3] == ("--api-socket", f"path={run / 'ch.sock'}")
    assert plan.accel is Accel.KVM
    handle = await backend.start(plan)
    assert plan.pid_file.read_text().strip() == str(handle.pid)
    await backend.pause(handle)
    await backend.resume(handle)
    await backend.snapshot(handle, snap)
    assert snap.is_dir()
    assert await backend.stop(handle, grace=1.0) == 0  # it exited on vmm.shutdown by itself
    assert _seen(seen) == [s["request"] for s in steps]
    assert not handle.alive()
    assert not [p.name for p in run.iterdir() if p.name.endswith((".sock", ".pid"))]


async def test_create_failure_surfaces_the_error_chain_and_kills_the_vmm(
    files: dict[str, Path], stub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    spec = _spec(files, run)
    chain = ["Error from API", "The VM could not be created", "Cannot open kernel: No such file"]
    seen = _script(monkeypatch, tmp_path, [_step("PUT", "vm.create", vm_config(spec), 500, chain)])
    backend = CloudHypervisorBackend(binary=stub, check_kvm=False)
    with pytest.raises(ChApiError) as err:
        await backend.start(backend.prepare(spec))
    assert err.value.code == "E_CH_API" and err.value.status == 500
    assert err.value.endpoint == "vm.create"
    assert err.value.message == (
        "Cloud Hypervisor vm.create failed (500): Error from API: The VM could not be created: "
        "Cannot open kernel: No such file"
    )
    assert len(_seen(seen)) == 1
    assert not (run / "ch.sock").exists() and not (run / "cloud-hypervisor.pid").exists()


async def test_plain_text_error_on_boot(
    files: dict[str, Path], stub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec(files, tmp_path / "run")
    _script(
        monkeypatch,
        tmp_path,
        [
            _step("PUT", "vm.create", vm_config(spec)),
            _step("PUT", "vm.boot", None, 500, "VM is not created"),
        ],
    )
    backend = CloudHypervisorBackend(binary=stub, check_kvm=False)
    with pytest.raises(ChApiError) as err:
        await backend.start(backend.prepare(spec))
    assert (err.value.endpoint, err.value.detail) == ("vm.boot", "VM is not created")


async def test_restore_then_resume(
    files: dict[str, Path], stub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "config.json").write_text("{}")
    steps = [
        _step("PUT", "vm.restore", {"source_url": snap.as_uri()}),
        _step("PUT", "vm.resume"),
        _step("PUT", "vmm.shutdown"),
    ]
    seen = _script(monkeypatch, tmp_path, steps)
    backend = CloudHypervisorBackend(binary=stub, check_kvm=False)
    plan = backend.prepare(_spec(files, tmp_path / "run", incoming=snap))
    assert backend.vm_config(plan) is None and plan.kernel_cmdline == ""
    handle = await backend.start(plan)
    assert await backend.stop(handle, grace=0) == 0  # grace 0: straight to vmm.shutdown
    assert _seen(seen) == [s["request"] for s in steps]


async def test_unexpected_request_is_a_coded_error(
    files: dict[str, Path], stub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stand-in itself must be able to fail a test: a wrong body is answered 599."""
    spec = _spec(files, tmp_path / "run")
    _script(monkeypatch, tmp_path, [_step("PUT", "vm.create", {"something": "else"})])
    backend = CloudHypervisorBackend(binary=stub, check_kvm=False)
    with pytest.raises(ChApiError) as err:
        await backend.start(backend.prepare(spec))
    assert err.value.status == 599 and "stub: expected" in err.value.detail


# -- planning and availability -------------------------------------------------------------


def test_prepare_errors_and_availability(
    files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MVM_CLOUD_HYPERVISOR", str(tmp_path / "absent"))
    backend = CloudHypervisorBackend()
    avail = backend.availability()
    assert not avail.ok and "cloud-hypervisor binary not found" in avail.reason
    with pytest.raises(BackendError) as err:
        backend.prepare(_spec(files, tmp_path / "run"))
    assert err.value.code == "E_CH_BINARY"
    for bad, code in (
        (_spec(files, tmp_path / "run", accel=Accel.TCG), "E_CH_ACCEL"),
        (_spec(files, tmp_path / "run", kernel=tmp_path / "nope"), "E_KERNEL_MISSING"),
        (_spec(files, tmp_path / "run", incoming=tmp_path), "E_SNAPSHOT_MISSING"),
    ):
        with pytest.raises(ConfigError) as cfg_err:
            backend.prepare(bad)
        assert cfg_err.value.code == code


def test_agent_endpoint(files: dict[str, Path], stub: Path, tmp_path: Path) -> None:
    backend = CloudHypervisorBackend(binary=stub, check_kvm=False)
    endpoint = backend.agent_endpoint(backend.prepare(_spec(files, tmp_path / "run")))
    assert isinstance(endpoint, HybridVsockEndpoint)
    assert (endpoint.path, endpoint.port) == (tmp_path / "run" / "vsock.sock", 5252)
