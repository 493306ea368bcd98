"""``mvmctl emit`` and ``mvmctl validate``: SDK declarations to canonical IR and back.

Emitting runs the user's entry file in a fresh interpreter (``python -m mvm.emit``)
with ``MVM_EMITTING=1``: the file is the user's program, its imports and module
state must not leak into the CLI (or into the next emit in the same process), and
a crash in it must surface as one error line, not a traceback in mvmctl. The
child only serializes what was declared; the parent parses it back with the
strict IR parser and validates it (lockfiles included, relative to the entry
file's directory), so emitted IR and hand-written IR pass the very same checks.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path

import attrs

from mvm.engine.errors import ConfigError, IrError, MvmError
from mvm.engine.ir import Workload, canonical_ir, ir_hash, validate, validate_text
from mvm.engine.ir.validate import loads

EMIT_TIMEOUT_SECS = 120.0


@attrs.frozen
class ValidatedIr:
    workload: Workload
    ir_hash: str


def emit_ir(entry: Path, *, timeout: float = EMIT_TIMEOUT_SECS) -> str:
    """Run ``entry`` with ``MVM_EMITTING=1`` and return its canonical IR (RFC 8785 text).

    Raises IrError when the declared workload is invalid, ConfigError
    (E_EMIT_FAILED) when the entry file itself fails.
    """
    entry = Path(entry).resolve()
    if not entry.is_file():
        raise ConfigError(f"entry file {entry} does not exist", code="E_EMIT_ENTRY")
    with tempfile.TemporaryDirectory(prefix="mvm-emit-") as tmp:
        out, err_file = Path(tmp) / "ir.json", Path(tmp) / "error.json"
        env = {**os.environ, "MVM_EMITTING": "1"}
        env.pop("MVM_IR_OUT", None)  # the child reports to us; the CLI decides where IR goes
        try:
            proc = subprocess.run(
                [sys.executable, "-P", "-m", "mvm.emit", str(entry), str(out), str(err_file)],
                cwd=entry.parent,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ConfigError(
                f"{entry.name} did not finish declaring within {timeout:.0f}s",
                code="E_EMIT_FAILED",
                hint="guard slow side effects with `if not mvm.emitting():`",
            ) from None
        if err_file.exists():
            raise _error_from_child(json.loads(err_file.read_text()))
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise ConfigError(
                f"running {entry.name} failed (exit {proc.returncode}): {tail}",
                code="E_EMIT_FAILED",
            )
        text = out.read_text(encoding="utf-8")
    workload = validate(loads(text), base_dir=entry.parent)
    return canonical_ir(workload).decode("utf-8")


def write_ir(text: str, out: Path | None = None) -> Path | None:
    """Write IR to ``out``, else ``$MVM_IR_OUT``, else stdout; returns the file written.

    Files get the exact canonical bytes, so ``sha256sum`` of the file is the ir_hash.
    """
    target = out or (Path(os.environ["MVM_IR_OUT"]) if os.environ.get("MVM_IR_OUT") else None)
    if target is None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)
    return target


def validate_file(
    path: Path, *, base_dir: Path | None = None, check_files: bool = True
) -> ValidatedIr:
    """Validate an IR file. Relative paths in it resolve against ``base_dir``
    (default: the file's directory); ``check_files=False`` skips lockfile checks."""
    try:
        text = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"IR file {path} does not exist", code="E_IR_FILE") from None
    except OSError as exc:
        raise ConfigError(f"cannot read IR file {path}: {exc.strerror}", code="E_IR_FILE") from None
    root = (base_dir or Path(path).parent) if check_files else None
    workload = validate_text(text, base_dir=root)
    return ValidatedIr(workload=workload, ir_hash=ir_hash(workload))


def _error_from_child(data: dict[str, str]) -> MvmError:
    if data.get("path") is not None:
        return IrError(data["path"], data["detail"], code=data["code"], hint=data.get("hint"))
    return ConfigError(data["message"], code=data["code"], hint=data.get("hint"))


def _child_main(argv: list[str]) -> int:
    """Inside the emit subprocess: run the entry file, dump the declared workload."""
    from mvm import sdk
    from mvm.engine.ir import workload_to_dict

    entry, out, err_file = (Path(a) for a in argv)
    sys.path.insert(0, str(entry.parent))
    sys.argv = [str(entry)]
    try:
        runpy.run_path(str(entry), run_name="__main__")
        data = workload_to_dict(sdk.declared_workload())
        try:
            text = json.dumps(data, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"the declaration holds a value that is not JSON: {exc}", code="E_EMIT_FAILED"
            ) from None
    except MvmError as exc:
        record = {"code": exc.code, "message": exc.message, "hint": exc.hint}
        if isinstance(exc, IrError):
            record.update(path=exc.path, detail=exc.detail)
        err_file.write_text(json.dumps(record))
        return 2
    out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(_child_main(sys.argv[1:]))
