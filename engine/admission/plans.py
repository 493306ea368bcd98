"""Signed ExecutionPlans: the only way a launch gets past admission.

A plan binds *what* runs (IR hash, image ref, resources, admission profile, VM
name, a sealed image's dm-verity root hash) to *when* (a validity window) and
*once* (a random nonce), and is signed with the host's Ed25519 key over the RFC
8785 canonical JSON of every field but ``signature``. Before dispatch,
:meth:`Admission.admit` checks, in this order: the signature (so forged plans
never touch the nonce store), the window, then the nonce — consuming it and
writing ``plan.admitted`` to the audit log in the same SQLite transaction, so a
nonce is spent if and only if the admission is recorded.
Launch outcomes are recorded as ``plan.launched`` / ``plan.failed``.

``labels`` are signed facts about the launch that are not inputs to it, such as
``seccomp_tier`` (the guest's syscall filter, from the image): every audit entry of
the plan carries them. A plan without labels signs and hashes as it did before
labels existed.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio.to_thread
import attrs
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mvm.backends.abc.types import Verity
from mvm.engine.admission.audit import (
    PLAN_ADMITTED,
    PLAN_FAILED,
    PLAN_LAUNCHED,
    AuditEntry,
    AuditLog,
    append_in,
    audit_db_path,
    transaction,
)
from mvm.engine.admission.keys import HostKey, public_key_id, verify_signature
from mvm.engine.base.errors import (
    ConfigError,
    IrError,
    MvmError,
    NonceReplay,
    PlanExpired,
    PlanNotYetValid,
    PlanSignatureError,
    SecurityError,
)
from mvm.engine.base.log import get_logger
from mvm.engine.ir.canonical import canonical_json
from mvm.engine.ir.convert import structure_strict, unstructure
from mvm.engine.ir.model import Resources

log = get_logger("mvm.admission.plans")

PLAN_VERSION = 1
PLAN_REJECTED = "plan.rejected"
DEFAULT_VALIDITY_SECS = 300
MAX_VALIDITY_SECS = 24 * 3600
CLOCK_SKEW_SECS = 30
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

_NONCE_SCHEMA = """
CREATE TABLE IF NOT EXISTS plan_nonces (
    nonce TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL,
    plan_hash TEXT NOT NULL
)
"""


@attrs.frozen
class ExecutionPlan:
    plan_version: int
    vm_name: str
    ir_hash: str
    image_ref: str
    resources: Resources
    admission_profile: str
    not_before: int
    not_after: int
    nonce: str
    key_id: str
    labels: dict[str, str] = attrs.field(factory=dict)
    signature: str = ""
    # A sealed image's dm-verity parameters (root hash, salt, sizes): signed with the
    # rest, and the only source of the guest's dm table (None: no verified root).
    verity: Verity | None = None

    def body(self) -> dict[str, Any]:
        """Every field except the signature: what is signed."""
        data = self.to_dict()
        del data["signature"]
        return data

    def signing_bytes(self) -> bytes:
        return canonical_json(self.body())

    @functools.cached_property
    def plan_hash(self) -> str:
        """Names this exact signed plan in the audit log."""
        return hashlib.sha256(canonical_json(self.to_dict())).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = unstructure(self)
        if not data["labels"]:
            del data["labels"]  # absent when unused: older plans keep their bytes
        return data

    @classmethod
    def from_dict(cls, data: object) -> ExecutionPlan:
        """Parse strictly; anything malformed is a signature failure (it was not what we signed)."""
        try:
            return structure_strict(data, cls)
        except IrError as exc:
            raise PlanSignatureError(f"malformed execution plan: {exc.message}") from None


def sign_plan(
    key: HostKey,
    *,
    vm_name: str,
    ir_hash: str,
    image_ref: str,
    resources: Resources,
    admission_profile: str = "default",
    valid_for_secs: int = DEFAULT_VALIDITY_SECS,
    now: float | None = None,
    labels: dict[str, str] | None = None,
    verity: Verity | None = None,
) -> ExecutionPlan:
    if not _HEX64.match(ir_hash):
        raise ConfigError(f"ir_hash {ir_hash!r} is not lowercase hex SHA-256", code="E_PLAN_INPUT")
    if not 1 <= valid_for_secs <= MAX_VALIDITY_SECS:
        raise ConfigError(
            f"plan validity {valid_for_secs}s out of range 1..{MAX_VALIDITY_SECS}",
            code="E_PLAN_INPUT",
        )
    start = int(time.time() if now is None else now)
    unsigned = ExecutionPlan(
        plan_version=PLAN_VERSION,
        vm_name=vm_name,
        ir_hash=ir_hash,
        image_ref=image_ref,
        resources=resources,
        admission_profile=admission_profile,
        not_before=start,
        not_after=start + valid_for_secs,
        nonce=secrets.token_hex(16),
        key_id=key.key_id,
        labels=dict(labels or {}),
        verity=verity,
    )
    signature = base64.b64encode(key.sign(unsigned.signing_bytes())).decode("ascii")
    return attrs.evolve(unsigned, signature=signature)


def verify_plan(
    plan: ExecutionPlan,
    public_key: Ed25519PublicKey,
    *,
    now: float | None = None,
    skew_secs: int = CLOCK_SKEW_SECS,
) -> None:
    """Signature, then validity window. Does not touch the nonce store."""
    if plan.key_id != public_key_id(public_key):
        raise PlanSignatureError(
            f"plan for {plan.vm_name!r} was signed by key {plan.key_id!r}, "
            f"not this host's key {public_key_id(public_key)!r}"
        )
    try:
        signature = base64.b64decode(plan.signature, validate=True)
    except (binascii.Error, ValueError):
        raise PlanSignatureError(f"plan for {plan.vm_name!r} has a garbled signature") from None
    if not verify_signature(public_key, signature, plan.signing_bytes()):
        raise PlanSignatureError(
            f"plan for {plan.vm_name!r} fails signature verification (altered after signing)"
        )
    if plan.plan_version != PLAN_VERSION:
        raise PlanSignatureError(f"unsupported plan_version {plan.plan_version}")
    current = time.time() if now is None else now
    if current < plan.not_before - skew_secs:
        raise PlanNotYetValid(
            f"plan for {plan.vm_name!r} is valid only from {plan.not_before} (now {int(current)})",
            hint="check the host clock",
        )
    if current >= plan.not_after:
        raise PlanExpired(
            f"plan for {plan.vm_name!r} expired at {plan.not_after} (now {int(current)})",
            hint="issue a fresh plan",
        )


def consume_nonce_in(conn: sqlite3.Connection, plan: ExecutionPlan, *, now: float) -> None:
    """Spend the plan's nonce inside an open write transaction; replays raise NonceReplay.

    Nonces of plans expired for over a day are pruned: such a plan is refused for
    its window before the nonce is ever looked up.
    """
    conn.execute(_NONCE_SCHEMA)
    conn.execute("DELETE FROM plan_nonces WHERE expires_at < ?", (int(now) - MAX_VALIDITY_SECS,))
    try:
        conn.execute(
            "INSERT INTO plan_nonces (nonce, expires_at, plan_hash) VALUES (?, ?, ?)",
            (plan.nonce, plan.not_after, plan.plan_hash),
        )
    except sqlite3.IntegrityError:
        raise NonceReplay(
            f"plan nonce {plan.nonce} for {plan.vm_name!r} was already used (replayed plan)",
            hint="every launch needs a freshly issued plan",
        ) from None


class Admission:
    """The launch gate: issues plans with the host key and admits them before dispatch."""

    def __init__(self, *, key: HostKey | None = None, db_path: Path | None = None) -> None:
        self.key = key or HostKey.load_or_create()
        self.db_path = db_path or audit_db_path()
        self.audit = AuditLog(self.db_path, key=self.key)

    def issue(
        self,
        *,
        vm_name: str,
        ir_hash: str,
        image_ref: str,
        resources: Resources,
        admission_profile: str = "default",
        valid_for_secs: int = DEFAULT_VALIDITY_SECS,
        now: float | None = None,
        labels: dict[str, str] | None = None,
        verity: Verity | None = None,
    ) -> ExecutionPlan:
        """:func:`sign_plan` with this host's key."""
        return sign_plan(
            self.key,
            vm_name=vm_name,
            ir_hash=ir_hash,
            image_ref=image_ref,
            resources=resources,
            admission_profile=admission_profile,
            valid_for_secs=valid_for_secs,
            now=now,
            labels=labels,
            verity=verity,
        )

    def admit(self, plan: ExecutionPlan, *, now: float | None = None) -> AuditEntry:
        current = time.time() if now is None else now
        try:
            verify_plan(plan, self.key.public_key, now=current)
            with transaction(self.db_path, self.key) as conn:
                consume_nonce_in(conn, plan, now=current)
                entry = append_in(conn, PLAN_ADMITTED, _summary(plan))
        except SecurityError as exc:
            log.warning("plan_rejected", vm=plan.vm_name, code=exc.code, reason=exc.message)
            try:
                self.audit.append(PLAN_REJECTED, {**_summary(plan), "code": exc.code})
            except Exception as audit_exc:  # never let auditing hide why the plan was refused
                log.error("audit_append_failed", audit_event=PLAN_REJECTED, error=str(audit_exc))
            raise
        log.info("plan_admitted", vm=plan.vm_name, plan=plan.plan_hash[:16], seq=entry.seq)
        return entry

    def record_launched(self, plan: ExecutionPlan, **details: Any) -> AuditEntry:
        return self.audit.append(PLAN_LAUNCHED, {**_summary(plan), **details})

    def record_failed(self, plan: ExecutionPlan, error: BaseException) -> AuditEntry:
        code = error.code if isinstance(error, MvmError) else type(error).__name__
        message = error.message if isinstance(error, MvmError) else str(error)
        return self.audit.append(PLAN_FAILED, {**_summary(plan), "code": code, "error": message})

    async def admit_async(self, plan: ExecutionPlan) -> AuditEntry:
        return await anyio.to_thread.run_sync(self.admit, plan)

    async def record_launched_async(self, plan: ExecutionPlan, **details: Any) -> AuditEntry:
        call = functools.partial(self.record_launched, plan, **details)
        return await anyio.to_thread.run_sync(call)

    async def record_failed_async(self, plan: ExecutionPlan, error: BaseException) -> AuditEntry:
        return await anyio.to_thread.run_sync(self.record_failed, plan, error)


def _summary(plan: ExecutionPlan) -> dict[str, Any]:
    return {
        "plan": plan.plan_hash,
        "vm": plan.vm_name,
        "ir_hash": plan.ir_hash,
        "image_ref": plan.image_ref,
        "admission_profile": plan.admission_profile,
        "key_id": plan.key_id,
        "nonce": plan.nonce,
        **plan.labels,  # e.g. seccomp_tier
        "verity_root_hash": plan.verity.root_hash if plan.verity else None,
    }
