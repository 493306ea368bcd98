"""Does a real guest boot under KVM here? A test boot, cached per host boot.

``/dev/kvm`` existing proves nothing: nested or half-broken KVM (this project's
CI hosts among them) opens fine and then aborts or crawls on the first vCPU
entry. So the verdict comes from a real boot with exactly the flags a QEMU VM
would get (``-accel kvm -cpu host``): a 200-byte PVH ELF stub, generated here,
that spins a loop and exits QEMU through ``isa-debug-exit`` with a known status.
QEMU runs the test because it is the one VMM here that boots a bare ELF stub;
the verdict serves every KVM VMM (QEMU's ``Accel.AUTO``, and Firecracker and
Cloud Hypervisor on nested hosts, see ``kvm.guests_run_under_kvm``), which is why
it lives in the shared VMM package and not in the QEMU backend.

The verdict is cached per host boot (``/proc/sys/kernel/random/boot_id``)
because module loads, nesting and permissions only change across reboots.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import subprocess
import tempfile
import time
from pathlib import Path

from mvm.engine.base.log import get_logger
from mvm.engine.base.paths import cache_dir

log = get_logger("mvm.vmm.kvm_probe")

QEMU_BINARY = "qemu-system-x86_64"
PROBE_TIMEOUT_S = 5.0
_PROBE_EXIT_BYTE = 0x2A
# isa-debug-exit turns `out 0xf4, v` into exit status (v << 1) | 1.
PROBE_EXIT_STATUS = (_PROBE_EXIT_BYTE << 1) | 1
_PROBE_VERSION = 1  # bump when the probe changes so old verdicts are not reused

# No default devices, no user config, no display, exit instead of reboot: the flags every
# QEMU microVM gets (mvm.backends.qemu.argv uses them), so the test boot is a VM's boot.
HEADLESS_FLAGS = ("-nodefaults", "-no-user-config", "-display", "none", "-no-reboot")


def probe_stub() -> bytes:
    """A 32-bit ELF with a Xen PVH entry note (QEMU's ``-kernel`` boots it directly).

    The code counts 2**24 iterations down (so the vCPU really executes guest code
    for a while) and then writes to the isa-debug-exit port; the status QEMU
    exits with proves the whole path worked.
    """
    base = 0x100000
    code = (
        bytes([0xB9, 0x00, 0x00, 0x00, 0x01])  # mov ecx, 1 << 24
        + bytes([0x49, 0x75, 0xFD])  # loop: dec ecx; jnz loop
        + bytes([0xB0, _PROBE_EXIT_BYTE])  # mov al, EXIT
        + bytes([0xE6, 0xF4])  # out 0xf4, al
        + bytes([0xF4, 0xEB, 0xFD])  # hlt; jmp hlt
    )
    ehsize, phsize = 52, 32
    note_off = ehsize + 2 * phsize
    note_len = 12 + 4 + 4  # header, "Xen\0", 32-bit entry
    code_off = note_off + note_len
    entry = base + code_off
    note = struct.pack("<III", 4, 4, 18) + b"Xen\0" + struct.pack("<I", entry)  # PHYS32_ENTRY
    total = code_off + len(code)
    ident = b"\x7fELF" + bytes([1, 1, 1, 0]) + bytes(8)  # ELFCLASS32, LSB, v1
    header = ident + struct.pack(
        "<HHIIIIIHHHHHH", 2, 3, 1, entry, ehsize, 0, 0, ehsize, phsize, 2, 0, 0, 0
    )
    load = struct.pack("<8I", 1, 0, base, base, total, total, 7, 0x1000)  # PT_LOAD rwx
    pt_note = struct.pack(
        "<8I", 4, note_off, base + note_off, base + note_off, note_len, note_len, 4, 4
    )
    return header + load + pt_note + note + code


def probe_argv(stub: Path, qemu: str = QEMU_BINARY) -> list[str]:
    return [
        qemu,
        "-M",
        "microvm,x-option-roms=off,pit=off,pic=off,rtc=off,isa-serial=off",
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-m",
        "16",
        "-smp",
        "1",
        *HEADLESS_FLAGS,
        "-kernel",
        str(stub),
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=4",
    ]


def run_kvm_probe(qemu: str = QEMU_BINARY, timeout: float = PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """Boot the stub under KVM; (works, why)."""
    kvm = Path("/dev/kvm")
    if not kvm.exists():
        return False, "/dev/kvm is absent"
    if not os.access(kvm, os.R_OK | os.W_OK):
        return False, "/dev/kvm is not accessible to this user"
    if shutil.which(qemu) is None:
        return False, f"{qemu} not found"
    with tempfile.TemporaryDirectory(prefix="mvm-kvm-probe-") as tmp:
        stub = Path(tmp) / "probe.elf"
        stub.write_bytes(probe_stub())
        t0 = time.monotonic()
        try:
            out = subprocess.run(
                probe_argv(stub, qemu),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:  # run() kills the child before raising
            return False, f"a KVM test boot did not finish within {timeout:.0f} s"
        elapsed = time.monotonic() - t0
    if out.returncode != PROBE_EXIT_STATUS:
        lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
        detail = lines[0] if lines else f"exit status {out.returncode}"
        return False, f"a KVM test boot failed: {detail}"
    return True, f"a KVM test boot succeeded in {elapsed * 1000:.0f} ms"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _verdict_path() -> Path:
    return cache_dir() / "accel" / f"kvm-probe-v{_PROBE_VERSION}-{_boot_id()}.json"


def kvm_verdict(*, refresh: bool = False) -> tuple[bool, str]:
    """Whether KVM works on this host, probed once per host boot and cached on disk."""
    path = _verdict_path()
    if not refresh:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            data = json.loads(path.read_text())
            return bool(data["kvm"]), str(data["reason"])
    works, reason = run_kvm_probe()
    log.info("vmm.kvm_probe", kvm=works, reason=reason)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"kvm": works, "reason": reason}) + "\n")
        os.replace(tmp, path)
    return works, reason
