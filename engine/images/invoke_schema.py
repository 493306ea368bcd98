"""The IR's ``args_schema`` / ``return_schema`` enforced on the host, around invoke.

The guest is not trusted to check its inputs the way the IR declares them, and a
caller should get a coded error before a call is sent, not "hello, 5". So the call's
arguments are validated against ``args_schema`` before the request goes out
(E_FUNCTION_ARGS) and the function's result against ``return_schema`` when it comes
back (E_FUNCTION_RETURN), with the ``jsonschema`` library (the draft the schema
names, else 2020-12).

``args_schema`` describes the keyword arguments as one object (``{"type":
"object", "properties": {"name": {"type": "string"}}}``); positional arguments are
checked against ``prefixItems`` when the schema is an array schema. Every violation
is reported (one line each, joined), not only the first.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import jsonschema
import jsonschema.exceptions
import jsonschema.validators

from mvm.engine.base.errors import ConfigError, MvmError

# The schemas travel with the image: /etc/mvm/<SCHEMAS_FILE> in the rootfs (written by
# engine/images/ir_image.py only when the IR declares one), read back on the host by debugfs,
# so `mvmctl invoke` checks the contract of the image the VM really runs.
SCHEMAS_FILE = "function-schemas.json"


class FunctionReturnError(MvmError):
    """The function answered with a value its IR's ``return_schema`` does not allow."""

    code = "E_FUNCTION_RETURN"


@attrs.frozen
class FunctionSchemas:
    """The two schemas of one function entrypoint (either may be absent)."""

    args_schema: Mapping[str, Any] | None = None
    return_schema: Mapping[str, Any] | None = None

    @classmethod
    def of(cls, entrypoint: Any) -> FunctionSchemas:
        """From an IR FunctionEntrypoint (or anything with those two attributes)."""
        return cls(
            getattr(entrypoint, "args_schema", None), getattr(entrypoint, "return_schema", None)
        )


def _problems(schema: Mapping[str, Any], value: Any) -> list[str]:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(dict(schema))
    except jsonschema.exceptions.SchemaError as exc:
        return [f"the IR's schema is itself invalid: {exc.message}"]
    validator = cls(schema)
    out = []
    for err in sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        out.append(f"{where}: {err.message}")
    return out


def check_args(
    schemas: FunctionSchemas | None, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> None:
    """Raise E_FUNCTION_ARGS naming every way the call breaks ``args_schema``."""
    if schemas is None or schemas.args_schema is None:
        return
    schema = schemas.args_schema
    if schema.get("type") == "array" or "prefixItems" in schema:
        value: Any = list(args)
        if kwargs:
            raise ConfigError(
                "this function takes positional arguments only (its args_schema is an array)",
                code="E_FUNCTION_ARGS",
            )
    else:
        value = dict(kwargs)
        if args:
            raise ConfigError(
                "this function takes keyword arguments only (its args_schema is an object)",
                code="E_FUNCTION_ARGS",
                hint="pass --input NAME=VALUE",
            )
    problems = _problems(schema, value)
    if problems:
        raise ConfigError(
            "arguments do not match the function's args_schema: " + "; ".join(problems),
            code="E_FUNCTION_ARGS",
            hint="see the IR's args_schema for this function",
        )


def check_result(schemas: FunctionSchemas | None, result: Any) -> Any:
    """``result`` unchanged, or E_FUNCTION_RETURN when ``return_schema`` refuses it."""
    if schemas is None or schemas.return_schema is None:
        return result
    problems = _problems(schemas.return_schema, result)
    if problems:
        raise FunctionReturnError(
            "the function's result does not match its return_schema: " + "; ".join(problems),
            hint="the function broke its declared contract; fix the function or the schema",
        )
    return result


def schemas_of_image(image_dir: Path) -> FunctionSchemas:
    """The schemas baked into an image's rootfs; none when it has no schemas file."""
    rootfs = image_dir / "rootfs.ext4"
    if not rootfs.is_file():
        return FunctionSchemas()
    try:
        out = subprocess.run(
            ["debugfs", "-R", f"cat /etc/mvm/{SCHEMAS_FILE}", str(rootfs)],
            capture_output=True,
            check=False,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return FunctionSchemas()
    try:
        doc = json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else {}
    except ValueError:
        return FunctionSchemas()
    if not isinstance(doc, dict):
        return FunctionSchemas()
    return FunctionSchemas(doc.get("args_schema"), doc.get("return_schema"))
