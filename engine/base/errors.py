"""One error hierarchy for all of mvm.

Every failure a user can cause or meet has a stable ``code`` (``E_...``) and a
one-line message that says what is wrong and what to do. The CLI prints
``error[CODE]: message (hint)`` and exits non-zero; it never shows a traceback for
an ``MvmError``. Codes are API: tests and scripts match on them, so never rename one.

Every code is registered, with its class, meaning and default hint, in
:mod:`mvm.engine.base.error_codes` (re-exported here as ``CODES`` / ``lookup``); a raise
site without a hint of its own gets the registry's in ``one_line()``.
"""

from __future__ import annotations

from collections.abc import Sequence

from mvm.engine.base.error_codes import CODES as CODES
from mvm.engine.base.error_codes import CodeInfo as CodeInfo
from mvm.engine.base.error_codes import default_hint as default_hint
from mvm.engine.base.error_codes import lookup as lookup


class MvmError(Exception):
    """Base of every error mvm raises on purpose."""

    code: str = "E_MVM"
    exit_status: int = 1

    def __init__(self, message: str, *, code: str | None = None, hint: str | None = None) -> None:
        if code is not None:
            self.code = code
        self.message = message
        self.hint = hint
        super().__init__(message)

    def one_line(self) -> str:
        """The single line the CLI prints: what went wrong and what to do (the raise
        site's hint, else the registry's default hint for the code)."""
        text = f"error[{self.code}]: {self.message}"
        hint = self.hint or default_hint(self.code)
        if hint:
            text += f" ({hint})"
        return text.replace("\n", " ")


class ConfigError(MvmError):
    """Bad user input: spec, mvm.toml, IR, CLI arguments."""

    code = "E_CONFIG"
    exit_status = 2


class SettingsError(ConfigError):
    """One or more environment variables are invalid. ``all_errors`` holds one coded
    ConfigError per bad variable (the CLI prints each); this error carries the first's
    code and message."""

    def __init__(self, problems: Sequence[ConfigError]) -> None:
        first = problems[0]
        super().__init__(first.message, code=first.code, hint=first.hint)
        self.all_errors: tuple[ConfigError, ...] = tuple(problems)


class StateError(MvmError):
    """The state store is unusable (corrupt, newer schema, locked)."""

    code = "E_STATE"


class NotFoundError(MvmError):
    """A named VM, snapshot, image or build does not exist."""

    code = "E_NOT_FOUND"


class ConflictError(MvmError):
    """A name is taken, a port is in use, or a VM is in the wrong state."""

    code = "E_CONFLICT"


class BackendError(MvmError):
    """The hypervisor failed or is unavailable on this host."""

    code = "E_BACKEND"


class BackendUnavailable(BackendError):
    """The backend cannot run on this host; the message says why."""

    code = "E_BACKEND_UNAVAILABLE"


class BuildError(MvmError):
    """Building a kernel, agent or image failed."""

    code = "E_BUILD"


class AgentError(MvmError):
    """The guest agent refused a request, broke the protocol or went away."""

    code = "E_AGENT"


class AccessDenied(MvmError):
    """The image is sealed: dev-only operations (exec, console, files) are refused."""

    code = "E_SEALED"


class ActorFailed(MvmError):
    """A supervised child exhausted its restart budget and escalated to its parent."""

    code = "E_ACTOR_FAILED"


class RequestTimeout(MvmError):
    """A request to an actor or the guest got no reply in time."""

    code = "E_TIMEOUT"


class SecurityError(MvmError):
    """A plan signature, nonce or audit chain check failed."""

    code = "E_SECURITY"


class IrError(ConfigError):
    """Workload IR is invalid. The message starts with the JSON path of the bad value
    (``$.apps[0].dependencies.python.lockfile: ...``) so a user can find it in the file."""

    code = "E_IR"

    def __init__(self, path: str, detail: str, *, code: str, hint: str | None = None) -> None:
        self.path = path
        self.detail = detail
        self.all_errors: tuple[IrError, ...] = (self,)
        super().__init__(f"{path}: {detail}", code=code, hint=hint)


class PlanSignatureError(SecurityError):
    """An ExecutionPlan is malformed, unsigned, signed by another key or altered after signing."""

    code = "E_PLAN_SIGNATURE"


class PlanExpired(SecurityError):
    """An ExecutionPlan's validity window has ended."""

    code = "E_PLAN_EXPIRED"


class PlanNotYetValid(SecurityError):
    """An ExecutionPlan's validity window has not started yet."""

    code = "E_PLAN_NOT_YET_VALID"


class NonceReplay(SecurityError):
    """An ExecutionPlan's nonce was already used: the plan is being replayed."""

    code = "E_NONCE_REPLAY"


class AuditTampered(SecurityError):
    """The hash-chained audit log was edited, truncated, reordered or had entries inserted."""

    code = "E_AUDIT_TAMPERED"

    def __init__(self, seq: int, reason: str) -> None:
        self.seq = seq
        self.reason = reason
        super().__init__(
            f"audit entry {seq}: {reason}",
            hint="the audit log can no longer be trusted; keep a copy and investigate",
        )


class KeyPermissions(SecurityError):
    """The host signing key is readable by others, not ours, or not a regular file."""

    code = "E_KEY_PERMISSIONS"


class RestartBudgetExhausted(ActorFailed):
    """A supervised child failed more than ``max_restarts`` times within ``window_s``."""

    code = "E_RESTART_BUDGET"


class ActorStopped(MvmError):
    """A message was sent to an actor that has ended (or ended before answering)."""

    code = "E_ACTOR_STOPPED"


class MessageError(MvmError):
    """A message could not cross the wire: unknown type tag, unknown field or bad value."""

    code = "E_MESSAGE"


class BuildPhaseError(BuildError):
    """A remote or delegated build failed in one named phase (connect, stage, build, fetch).

    The phase is part of the message so a user knows where to look: an auth failure
    is a key problem, a build failure is the flake, a fetch failure is the builder's disk.
    """

    code = "E_BUILD_PHASE"

    def __init__(self, phase: str, message: str, *, code: str, hint: str | None = None) -> None:
        self.phase = phase
        super().__init__(f"{phase}: {message}", code=code, hint=hint)


def error_leaves(exc: BaseException) -> list[BaseException]:
    """The errors inside (possibly nested) exception groups, in order."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in error_leaves(sub)]
    return [exc]


def unwrap(exc: BaseException) -> BaseException:
    """A group holding a single error (what a task group makes of one failure) -> that
    error, so callers can match on MvmError codes."""
    leaves = error_leaves(exc)
    return leaves[0] if len(leaves) == 1 else exc
