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
import re
import runpy
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import attrs

from mvm.engine.base.errors import ConfigError, IrError, MvmError
from mvm.engine.ir import Workload, canonical_ir, ir_hash, validate, validate_text
from mvm.engine.ir.validation import loads

EMIT_TIMEOUT_SECS = 120.0


@attrs.frozen
class ValidatedIr:
    workload: Workload
    ir_hash: str
    # Fields of an original-SDK document that have no effect here, one line each.
    warnings: tuple[str, ...] = ()


JS_SUFFIXES = (".ts", ".mts", ".js", ".mjs")
SDK_TS = Path(__file__).parent / "sdk_ts"


def emit_ir(entry: Path, *, timeout: float = EMIT_TIMEOUT_SECS) -> str:
    """Run ``entry`` with ``MVM_EMITTING=1`` and return its canonical IR (RFC 8785 text).

    ``.py`` files run under this Python (``-P``: a checkout's ./mvm never shadows the
    installed package); ``.ts``/``.js`` files under Node with the bundled ``mvm-sdk``.
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
        if entry.suffix in JS_SUFFIXES:
            argv = _node_argv(entry, env)
            env["MVM_IR_OUT"] = str(out)
        else:
            argv = [sys.executable, "-P", "-m", "mvm.emit", str(entry), str(out), str(err_file)]
        try:
            proc = subprocess.run(
                argv,
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
            raise _failure(entry, proc.returncode, proc.stderr)
        text = out.read_text(encoding="utf-8")
    workload = validate(loads(text), base_dir=entry.parent)
    return canonical_ir(workload).decode("utf-8")


def _failure(entry: Path, returncode: int, stderr: str) -> ConfigError:
    tail = (stderr.strip().splitlines() or ["no output"])[-1]
    coded = _CODED_LINE.match(tail)
    if coded:  # the Node SDK prints `error[CODE]: message`
        return ConfigError(f"{entry.name}: {coded['message']}", code=coded["code"])
    return ConfigError(
        f"running {entry.name} failed (exit {returncode}): {tail}", code="E_EMIT_FAILED"
    )


_CODED_LINE = re.compile(r"^error\[(?P<code>E_[A-Z0-9_]+)\]: (?P<message>.*)$")


def _node_argv(entry: Path, env: dict[str, str]) -> list[str]:
    node = shutil.which("node")
    if node is None:
        raise ConfigError(
            f"{entry.name} is a TypeScript/JavaScript entry file and this host has no node",
            code="E_EMIT_NODE_MISSING",
            hint="install Node.js 20+ (apt-get install nodejs)",
        )
    if entry.suffix in (".ts", ".mts"):
        compiler = typescript_path()
        if compiler is None:
            raise ConfigError(
                f"{entry.name} needs the TypeScript compiler, which is not installed",
                code="E_EMIT_TYPESCRIPT_MISSING",
                hint="run ./scripts/setup (npm install --prefix .venv/node typescript)",
            )
        env["MVM_TYPESCRIPT"] = str(compiler)
    return [node, "--no-warnings", "--import", (SDK_TS / "register.mjs").as_uri(), str(entry)]


def typescript_path() -> Path | None:
    """The ``typescript`` npm package: $MVM_TYPESCRIPT, the venv's, or the global one."""
    candidates = [Path(p) for p in [os.environ.get("MVM_TYPESCRIPT", "")] if p]
    candidates.append(Path(sys.prefix) / "node" / "node_modules" / "typescript")
    candidates.append(Path("/usr/lib/node_modules/typescript"))
    candidates.append(Path("/usr/local/lib/node_modules/typescript"))
    for path in candidates:
        if (path / "package.json").is_file():
            return path
    return None


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
    warnings: list[str] = []
    workload = validate_text(text, base_dir=root, warnings=warnings)
    return ValidatedIr(workload=workload, ir_hash=ir_hash(workload), warnings=tuple(warnings))


def emit_declared(base_dir: Path | None = None) -> int:
    """Validate what this process declared and write it (``$MVM_IR_OUT`` or stdout).

    The in-process half of the emit contract (``MVM_EMITTING=1 python entry.py``);
    returns an exit status, printing one ``error[CODE]`` line on failure.
    """
    from mvm import sdk
    from mvm.engine.ir import workload_to_dict

    root = base_dir or (Path(sys.argv[0]).resolve().parent if sys.argv[0] else Path.cwd())
    try:
        data = json.loads(json.dumps(workload_to_dict(sdk.declared_workload()), allow_nan=False))
        write_ir(canonical_ir(validate(data, base_dir=root)).decode("utf-8"))
    except (TypeError, ValueError) as exc:
        sys.stderr.write(f"error[E_EMIT_FAILED]: the declaration is not JSON: {exc}\n")
        return 2
    except MvmError as exc:
        for err in getattr(exc, "all_errors", (exc,)):
            sys.stderr.write(err.one_line() + "\n")
        return 2
    return 0


def _error_from_child(data: dict[str, str]) -> MvmError:
    if data.get("path") is not None:
        return IrError(data["path"], data["detail"], code=data["code"], hint=data.get("hint"))
    return ConfigError(data["message"], code=data["code"], hint=data.get("hint"))


def _child_main(argv: list[str]) -> int:
    """Inside the emit subprocess: run the entry file, dump the declared workload."""
    from mvm import sdk
    from mvm.engine.ir import workload_to_dict

    sdk.disarm_auto_emit()  # this child reports to the parent, not to $MVM_IR_OUT
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
