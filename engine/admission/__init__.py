"""mvm.engine.admission: no VMM starts without a signed, unexpired, never-replayed plan.

Every launch is admitted through a signed ``ExecutionPlan`` (``keys``: the host's
Ed25519 signer; ``plans``: sign, verify, the nonce store) and recorded in the hash-chained,
head-signed audit log (``audit``, ``audit_head``). ``LaunchGate`` is what the lifecycle
calls; ``AuditLog`` is what the CLI reads and verifies. Other packages use what is exported here.
"""

from mvm.engine.admission.audit import AuditLog
from mvm.engine.admission.gate import LaunchGate
from mvm.engine.admission.plans import ExecutionPlan

__all__ = [
    "AuditLog",
    "ExecutionPlan",
    "LaunchGate",
]
