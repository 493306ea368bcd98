"""What a VM's row and its VMM are told: the VmSpec the backend prepares a plan from,
and the spec recorded in the row (adoption and ``start`` read it back)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from mvm.backends.abc.types import Accel, NetDevice, Verity, VmSpec
from mvm.engine.request.envvars import env_kernel_arg
from mvm.engine.request.volumes import kernel_arg

if TYPE_CHECKING:
    from mvm.engine.vm.runtime import RuntimeVM


def vm_spec(vm: RuntimeVM) -> VmSpec:
    req, image = vm.request, vm.image
    extra_args = tuple(a for a in (kernel_arg(req.volumes), env_kernel_arg(dict(req.env))) if a)
    nics: tuple[NetDevice, ...] = ()
    if vm.lease is not None:
        extra_args += (vm.lease.kernel_arg,)
        nics = (NetDevice(tap=vm.lease.tap, mac=vm.lease.mac),)
    spec = VmSpec(
        name=req.name,
        kernel=image.kernel,
        rootfs=image.rootfs,
        run_dir=vm.run_dir,
        vcpus=req.vcpus or image.vcpus,
        memory_mib=req.memory_mib or image.memory_mib,
        kernel_args=(f"mvm.hostname={req.name}", *extra_args),
        drives=tuple(vm.drives),
        net=nics,
        accel=vm.accel,
        rootfs_read_only=True,
        verity=_verity(vm),
    )
    snap = vm.restore
    if snap is None:
        return spec
    # The device model must equal the source's: same kernel, disk, sizes and
    # accelerator; only host-side paths (run dir, sockets) differ.
    return attrs.evolve(
        spec,
        kernel=snap.kernel,
        rootfs=snap.rootfs,
        vcpus=snap.vcpus,
        memory_mib=snap.memory_mib,
        accel=Accel(snap.accel),
        incoming=snap.state_path,
        agent_vsock=snap.agent_transport == "vsock",
    )


def _verity(vm: RuntimeVM) -> Verity | None:
    """The dm-verity parameters the guest's dm table is built from: the signed plan's
    (admission issued it from the image); without a gate (tests), the image's own."""
    if vm.exec_plan is not None:
        return vm.exec_plan.verity
    return vm.image.verity if vm.image.sealed else None


def record_spec(vm: RuntimeVM) -> dict[str, Any]:
    req = vm.request
    verity = vm.image.verity if vm.image.sealed else None
    return {
        "image": str(vm.image.directory),
        "ports": [str(p) for p in req.ports],
        "vcpus": req.vcpus,
        "memory_mib": req.memory_mib,
        "mode": req.mode,
        "volumes": [str(v) for v in req.volumes],
        "net": req.net,
        "ip": vm.lease.ip if vm.lease else None,
        "snapshot": vm.restore.name if vm.restore else None,
        "health_action": req.health_action,
        "stop_grace_s": req.stop_grace_s,
        "boot_timeout_s": req.boot_timeout_s,
        "ir_hash": req.ir_hash,  # `mvmctl start` boots it again under the same plan
        "verity_root_hash": verity.root_hash if verity else None,  # mvmctl inspect shows it
    }
