"""Admission on the launch path: no VMM starts without an admitted, signed plan.

Every cold start and every clone (not the adoption of a VMM that is already
running) gets an ExecutionPlan issued with the host key for exactly this VM:
what runs (the workload's IR hash, or the image spec's hash for images not built
from IR), the image and its dm-verity root hash, the resources, the admission
profile (``prod`` for sealed images, ``dev`` otherwise), the ``seccomp_tier`` label
(the image's guest syscall filter) and a five-minute validity window. ``Admission``
verifies it and spends its nonce, recording ``plan.admitted`` in the audit
chain, before the VMM is spawned; the VM then records ``plan.launched`` once its
agent greeted, or ``plan.failed`` with the error code. ``mvmctl audit verify``
checks that chain.

The host key is loaded (or created) once per engine, on the first launch, in a
worker thread: opening an engine stays cheap for commands that launch nothing.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import anyio
import anyio.to_thread

from mvm.engine.admission.plans import Admission, ExecutionPlan
from mvm.engine.base.errors import MvmError, error_leaves
from mvm.engine.base.log import get_logger
from mvm.engine.images.image import Image
from mvm.engine.ir.model import Resources
from mvm.engine.request.vmrequest import VmRequest

log = get_logger("mvm.launch")


def workload_hash(request: VmRequest, image: Image) -> str:
    """What runs, as a SHA-256: the IR hash when the launch came from Workload IR."""
    if request.ir_hash:
        return request.ir_hash
    spec_hash = image.meta.get("spec_hash")
    if isinstance(spec_hash, str) and len(spec_hash) == 64:
        return spec_hash
    return hashlib.sha256((image.directory / "mvm-meta.json").read_bytes()).hexdigest()


class LaunchGate:
    def __init__(self, admission: Admission | None = None) -> None:
        self._admission = admission
        self._lock = anyio.Lock()

    async def _gate(self) -> Admission:
        async with self._lock:
            if self._admission is None:
                self._admission = await anyio.to_thread.run_sync(Admission)
            return self._admission

    async def admit(self, request: VmRequest, image: Image) -> ExecutionPlan:
        """Issue and admit this launch's plan; raises a SecurityError if refused."""
        gate = await self._gate()
        plan = gate.issue(
            vm_name=request.name,
            ir_hash=workload_hash(request, image),
            image_ref=str(image.directory),
            resources=Resources(
                vcpus=request.vcpus or image.vcpus,
                memory_mb=request.memory_mib or image.memory_mib,
                boot_timeout_secs=math.ceil(request.boot_timeout_s),
            ),
            admission_profile="prod" if image.sealed else "dev",
            labels={"seccomp_tier": image.seccomp_tier},
            verity=image.verity if image.sealed else None,
        )
        await gate.admit_async(plan)
        return plan

    async def launched(self, plan: ExecutionPlan, **details: Any) -> None:
        await self._record(lambda gate: gate.record_launched_async(plan, **details))

    async def failed(self, plan: ExecutionPlan, error: BaseException) -> None:
        cause = _primary(error)
        await self._record(lambda gate: gate.record_failed_async(plan, cause))

    async def _record(self, write: Any) -> None:
        """An outcome is recorded even while the launch is being cancelled, and a
        failure to write it is logged, never raised over the launch's own result."""
        with anyio.CancelScope(shield=True):
            try:
                await write(await self._gate())
            except Exception as exc:
                log.error("audit.record_failed", error=repr(exc))


def _primary(error: BaseException) -> BaseException:
    """The error worth recording: the first MvmError inside task-group wrapping."""
    leaves = error_leaves(error)
    return next((e for e in leaves if isinstance(e, MvmError)), leaves[0])
