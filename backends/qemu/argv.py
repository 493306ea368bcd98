"""The QEMU command line for one microVM, as a pure function of the spec.

No I/O here (the accelerator, TSC and vsock decisions are inputs), so unit
tests pin every flag and ``mvmctl doctor`` can show a plan without booting.

Choices worth knowing:
* ``-M microvm`` without option ROMs, PIT or PIC: the kernel boots PVH straight
  from ``-kernel vmlinux`` and all devices sit on virtio-mmio, in the order they
  are given (rootfs = vda, then the extra drives). The RTC stays on: with
  ``rtc=off`` the guest's CMOS driver waits ~2 s for a clock that never answers.
* A sealed image with verity boots ``root=/dev/dm-0``: the mapping is on the command
  line (``backends/abc/verity.py``), so it is in the LaunchPlan.
* Under TCG the kernel gets ``tsc_early_khz`` (see ``accel``).
* The console goes to a file chardev (``append=on``: a restore keeps the boot log);
  control is QMP on a Unix socket; the guest agent is a virtio-serial port named
  ``mvm.agent`` on a Unix socket, or vhost-vsock when the host has it.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import attrs

from mvm.backends.abc.types import Accel, VmSpec
from mvm.backends.abc.verity import root_args
from mvm.backends.vmm.kvm_probe import HEADLESS_FLAGS, QEMU_BINARY

AGENT_PORT_NAME = "mvm.agent"
AGENT_VSOCK_PORT = 5252
MACHINE = "microvm,x-option-roms=off,pit=off,pic=off,rtc=on,isa-serial=on"
BASE_CMDLINE = (
    "console=ttyS0",
    "reboot=t",
    "panic=-1",
    "init=/init",
)


@attrs.frozen
class RunPaths:
    """Files of one VM in its run directory; sockets end in .sock and the pid file
    in .pid so that ``remove_run_files`` clears them at teardown."""

    run_dir: Path

    @property
    def qmp(self) -> Path:
        return self.run_dir / "qmp.sock"

    @property
    def agent(self) -> Path:
        return self.run_dir / "agent.sock"

    @property
    def console(self) -> Path:
        return self.run_dir / "console.log"

    @property
    def pid(self) -> Path:
        return self.run_dir / "qemu.pid"

    @property
    def stderr(self) -> Path:
        return self.run_dir / "qemu.log"


def opt(value: str | Path) -> str:
    """Escape a value inside a QEMU ``key=value,...`` option (commas are doubled)."""
    return str(value).replace(",", ",,")


def kernel_cmdline(spec: VmSpec, accel: Accel, *, tsc_khz: int | None, vsock: bool) -> str:
    # A sealed image's root is the dm-verity mapping built from the plan's root hash.
    root = root_args(spec.verity)
    args = [*BASE_CMDLINE, *root, "ro" if spec.rootfs_read_only else "rw", "rootfstype=ext4"]
    if accel is Accel.TCG:
        if tsc_khz is None:
            raise ValueError("a TCG guest needs the host TSC frequency")
        args.append(f"tsc_early_khz={tsc_khz}")
    # Tells /init which channel the host dials, so one image fits both transports.
    args.append(
        f"mvm.agent=vsock:{AGENT_VSOCK_PORT}" if vsock else f"mvm.agent=serial:{AGENT_PORT_NAME}"
    )
    args.extend(spec.kernel_args)
    return " ".join(args)


def _drive(
    ident: str, path: Path, *, read_only: bool, serial: str = "", fmt: str = "raw"
) -> list[str]:
    drive = f"id={ident},file={opt(path)},format={fmt},if=none"
    if read_only:
        drive += ",readonly=on"
    device = f"virtio-blk-device,drive={ident}"
    if serial:
        device += f",serial={opt(serial[:20])}"  # virtio-blk serials hold 20 bytes
    return ["-drive", drive, "-device", device]


def build_argv(
    spec: VmSpec,
    *,
    accel: Accel,
    tsc_khz: int | None,
    vsock_cid: int | None = None,
    qemu: str = QEMU_BINARY,
) -> tuple[list[str], str]:
    """(argv, kernel command line). ``accel`` must be resolved (KVM or TCG)."""
    if accel is Accel.AUTO:
        raise ValueError("resolve the accelerator before building the command line")
    paths = RunPaths(spec.run_dir)
    cmdline = kernel_cmdline(spec, accel, tsc_khz=tsc_khz, vsock=vsock_cid is not None)
    argv = [
        qemu,
        "-M",
        MACHINE,
        "-accel",
        accel.value,
        "-cpu",
        "host" if accel is Accel.KVM else "max",
        "-m",
        str(spec.memory_mib),
        "-smp",
        str(spec.vcpus),
        *HEADLESS_FLAGS,
        "-kernel",
        str(spec.kernel),
        "-append",
        cmdline,
        "-chardev",
        f"file,id=con,path={opt(paths.console)},append=on",
        "-serial",
        "chardev:con",
        "-qmp",
        f"unix:{opt(paths.qmp)},server=on,wait=off",
        "-pidfile",
        str(paths.pid),
    ]
    argv += _drive("root", spec.rootfs, read_only=spec.rootfs_read_only, serial="rootfs")
    for i, drive in enumerate(spec.drives):
        argv += _drive(
            f"drive{i}", drive.path, read_only=drive.read_only, serial=drive.ident, fmt=drive.format
        )
    for i, nic in enumerate(spec.net):
        argv += [
            "-netdev",
            f"tap,id=net{i},ifname={opt(nic.tap)},script=no,downscript=no",
            "-device",
            f"virtio-net-device,netdev=net{i},mac={nic.mac}",
        ]
    if vsock_cid is not None:
        argv += ["-device", f"vhost-vsock-device,guest-cid={vsock_cid}"]
    else:
        argv += [
            "-device",
            "virtio-serial-device",
            "-chardev",
            f"socket,id=agent,path={opt(paths.agent)},server=on,wait=off",
            "-device",
            f"virtserialport,chardev=agent,name={AGENT_PORT_NAME}",
        ]
    if spec.incoming is not None:
        argv += ["-incoming", f"exec:cat {shlex.quote(str(spec.incoming))}"]
    return argv, cmdline
