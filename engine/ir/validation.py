"""Validate Workload IR: structure first (types, unknown/missing fields), then meaning.

Every problem is an :class:`IrError` whose message starts with the JSON path of
the offending value and whose code is stable. :func:`validate` raises the first
problem and lists all of them in ``err.all_errors`` so a CLI can show everything
that is wrong in one pass. Checks that need the project's files (the lockfile)
run only when a ``base_dir`` is given: IR can be validated away from its source.
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

from mvm.engine.base.errors import IrError
from mvm.engine.ir import legacy, lockfiles
from mvm.engine.ir.convert import json_path, structure_workload
from mvm.engine.ir.model import (
    SCHEMA_VERSION,
    App,
    FunctionEntrypoint,
    LocalPath,
    NodeDeps,
    NoDeps,
    OciBase,
    OciImage,
    PythonDeps,
    Workload,
    tag_of,
)

E_SCHEMA_VERSION = "E_IR_SCHEMA_VERSION"
E_JSON = "E_IR_JSON"
E_VALUE = "E_IR_VALUE"
E_UNSUPPORTED_LANGUAGE = "E_UNSUPPORTED_LANGUAGE"
E_UNPINNED_DEPS = "E_UNPINNED_DEPS"
E_SECRET_FIELD = "E_SECRET_FIELD"
E_OCI_DIGEST = "E_OCI_DIGEST"
E_IR_TOO_LARGE = "E_IR_TOO_LARGE"
# Checked before parsing: a declaration is kilobytes; this bounds parser memory and time.
MAX_IR_BYTES = 4 * 1024 * 1024

_APP_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_WORKLOAD_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PY_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_EXTENSION_KEY = re.compile(r"^(x-[a-z0-9-]+|[a-z0-9-]+(\.[a-z0-9-]+)+)$")
# Field names that hold credentials. Secrets reach a guest through the secrets
# drive, never as function arguments or results, which are logged and audited.
_SECRET_NAME = re.compile(
    r"(pass(word|wd|phrase)?|secret|token|api[_-]?key|private[_-]?key|credential|"
    r"auth[_-]?(key|header)|access[_-]?key|session[_-]?key|bearer|cookie)",
    re.IGNORECASE,
)


@cache
def supported_languages() -> dict[str, dict[str, Any]]:
    """The function languages the guest runtime supports (engine/ir/languages.json)."""
    text = resources.files("mvm.engine.ir").joinpath("languages.json").read_text("utf-8")
    langs: dict[str, dict[str, Any]] = json.loads(text)["languages"]
    return langs


def loads(text: str | bytes) -> Any:
    """Parse IR text strictly: no NaN/Infinity, no duplicate keys, at most MAX_IR_BYTES."""
    size = len(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    if size > MAX_IR_BYTES:
        raise IrError(
            "$",
            f"IR document is {size} bytes; the limit is {MAX_IR_BYTES}",
            code=E_IR_TOO_LARGE,
            hint="an IR declares a workload; ship data in the source tree or a volume",
        )

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(f"duplicate key {key!r}")
            out[key] = value
        return out

    try:
        return json.loads(text, parse_constant=no_constants, object_pairs_hook=no_duplicates)
    except RecursionError:
        raise IrError("$", "document nested too deeply", code=E_JSON) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise IrError("$", f"not valid JSON: {exc}", code=E_JSON) from None


def parse_workload(data: object) -> Workload:
    """Check the schema version, then structure ``data``; raises IrError."""
    if not isinstance(data, dict):
        raise IrError("$", f"expected a JSON object, got {type(data).__name__}", code="E_IR_TYPE")
    if "schema_version" in data and data["schema_version"] != SCHEMA_VERSION:
        # Alone: under another schema, "unknown field" and "missing field" mean nothing.
        raise IrError(
            "$.schema_version",
            f"unsupported schema version {data['schema_version']!r}; this mvm reads "
            f"{SCHEMA_VERSION!r}",
            code=E_SCHEMA_VERSION,
            hint="re-emit the IR with this mvm's SDK, or upgrade mvm",
        )
    try:
        return structure_workload(data)
    except RecursionError:
        raise IrError("$", "document nested too deeply", code="E_IR_TYPE") from None


def check_workload(workload: Workload, *, base_dir: Path | None = None) -> list[IrError]:
    """Semantic problems of a structurally valid workload, in document order."""
    errors: list[IrError] = []
    _check(workload, base_dir, errors)
    return errors


def validate(
    data: object, *, base_dir: Path | None = None, warnings: list[str] | None = None
) -> Workload:
    """Parse and check; raises the first IrError (all of them in ``.all_errors``).

    IR emitted by the original's SDK (PyPI ``mvm``) is mapped onto our model first;
    what it holds that has no effect here is appended to ``warnings``, one line each.
    """
    early: list[IrError] = []
    if legacy.is_original(data):
        assert isinstance(data, dict)
        data, notes = legacy.translate(data)
        early = legacy.problems(data)
        if warnings is not None:
            warnings.extend(notes)
    try:
        workload = parse_workload(data)
    except IrError as exc:
        _raise_all([*early, *exc.all_errors])
    _raise_all(early + check_workload(workload, base_dir=base_dir))
    return workload


def _raise_all(errors: list[IrError]) -> None:
    """Raise the first of ``errors`` carrying all of them (nothing when there are none)."""
    if errors:
        first = errors[0]
        first.all_errors = tuple(errors)
        raise first from None


def validate_text(
    text: str | bytes, *, base_dir: Path | None = None, warnings: list[str] | None = None
) -> Workload:
    return validate(loads(text), base_dir=base_dir, warnings=warnings)


def _sub(at: str, *segs: str | int) -> str:
    """``at`` extended by path segments, quoting keys that are not identifiers."""
    return at + json_path(list(segs))[1:]


def _err(errors: list[IrError], path: str, detail: str, code: str, hint: str | None = None) -> None:
    errors.append(IrError(path, detail, code=code, hint=hint))


def _check(w: Workload, base_dir: Path | None, errors: list[IrError]) -> None:
    if not _WORKLOAD_ID.match(w.id):
        _err(
            errors,
            "$.id",
            f"{w.id!r} is not a valid id",
            E_VALUE,
            "use letters, digits, '.', '_' and '-', at most 128",
        )
    if not w.apps:
        _err(errors, "$.apps", "a workload needs at least one app", E_VALUE)
    volume_names: set[str] = set()
    for i, vol in enumerate(w.volumes):
        if not _APP_NAME.match(vol.name):
            _err(errors, f"$.volumes[{i}].name", f"{vol.name!r} is not a valid name", E_VALUE)
        if vol.name in volume_names:
            _err(errors, f"$.volumes[{i}].name", f"duplicate volume {vol.name!r}", E_VALUE)
        volume_names.add(vol.name)
        if not 1 <= vol.size_mb <= 1 << 20:
            _err(errors, f"$.volumes[{i}].size_mb", "must be in 1..1048576", E_VALUE)
    app_names: set[str] = set()
    for i, app in enumerate(w.apps):
        if app.name in app_names:
            _err(errors, f"$.apps[{i}].name", f"duplicate app {app.name!r}", E_VALUE)
        app_names.add(app.name)
        _check_app(app, f"$.apps[{i}]", volume_names, base_dir, errors)
    for key in w.extensions:
        if not _EXTENSION_KEY.match(key):
            _err(
                errors,
                json_path(["extensions", key]),
                "extension keys must be namespaced",
                E_VALUE,
                "use reverse-DNS like 'com.example.feature' or an 'x-' prefix",
            )


def _check_app(
    app: App, at: str, volumes: set[str], base_dir: Path | None, errors: list[IrError]
) -> None:
    if not _APP_NAME.match(app.name):
        _err(
            errors,
            f"{at}.name",
            f"{app.name!r} is not a valid app name",
            E_VALUE,
            "use 1-63 lowercase letters, digits and '-'",
        )
    _check_oci(app, at, errors)
    if isinstance(app.source, LocalPath):
        _check_relative(app.source.path, f"{at}.source.path", errors)
    if not app.entrypoints:
        _err(errors, f"{at}.entrypoints", "an app needs at least one entrypoint", E_VALUE)
    primaries = 0
    for j, ep in enumerate(app.entrypoints):
        ep_at = f"{at}.entrypoints[{j}]"
        if isinstance(ep, FunctionEntrypoint):
            primaries += ep.primary
            if ep.primary and primaries > 1:
                _err(errors, f"{ep_at}.primary", "only one function may be primary", E_VALUE)
            _check_function(ep, ep_at, app, errors)
        elif not ep.command or not ep.command[0]:
            _err(errors, f"{ep_at}.command", "command is empty", E_VALUE)
    for key in app.env:
        if not _ENV_NAME.match(key):
            _err(errors, _sub(at, "env", key), "not a valid environment variable name", E_VALUE)
    for j, mount in enumerate(app.mounts):
        if mount.volume not in volumes:
            _err(errors, f"{at}.mounts[{j}].volume", f"no volume named {mount.volume!r}", E_VALUE)
        if not mount.path.startswith("/"):
            _err(errors, f"{at}.mounts[{j}].path", "guest path must be absolute", E_VALUE)
    for j, port in enumerate(app.network.ports if app.network else ()):
        if not 1 <= port <= 65535:
            _err(errors, f"{at}.network.ports[{j}]", f"port {port} out of range 1..65535", E_VALUE)
    _check_resources(app, at, errors)
    for j, addon in enumerate(app.addons):
        if not _APP_NAME.match(addon):
            _err(errors, f"{at}.addons[{j}]", f"{addon!r} is not a valid addon name", E_VALUE)
    _check_deps(app, at, base_dir, errors)


def _check_oci(app: App, at: str, errors: list[IrError]) -> None:
    refs: list[tuple[str, OciImage | OciBase]] = []
    if isinstance(app.source, OciImage):
        refs.append((f"{at}.source", app.source))
    if isinstance(app.image, OciBase):
        refs.append((f"{at}.image", app.image))
    for where, oci in refs:
        if not _DIGEST.match(oci.digest):
            _err(
                errors,
                f"{where}.digest",
                f"{oci.digest!r} is not a sha256 digest",
                E_OCI_DIGEST,
                "pin the image by digest: 'sha256:' followed by 64 lowercase hex digits",
            )
        elif "@" in oci.reference and oci.reference.split("@", 1)[1] != oci.digest:
            _err(
                errors,
                f"{where}.reference",
                "digest in reference differs from the digest field",
                E_OCI_DIGEST,
            )
        if not oci.reference:
            _err(errors, f"{where}.reference", "image reference is empty", E_VALUE)


def _check_relative(path: str, at: str, errors: list[IrError]) -> None:
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or ".." in pure.parts:
        _err(
            errors,
            at,
            f"{path!r} must be a relative path inside the project",
            E_VALUE,
            "paths are relative to the directory holding the IR file",
        )


def _check_function(ep: FunctionEntrypoint, at: str, app: App, errors: list[IrError]) -> None:
    langs = supported_languages()
    lang = langs.get(ep.language)
    if lang is None:
        _err(
            errors,
            f"{at}.language",
            f"language {ep.language!r} is not supported (supported: {', '.join(sorted(langs))})",
            E_UNSUPPORTED_LANGUAGE,
        )
    else:
        if not re.match(lang["module_pattern"], ep.module):
            _err(
                errors,
                f"{at}.module",
                f"{ep.module!r} is not a valid {ep.language} module",
                E_VALUE,
            )
        deps = app.dependencies
        if not isinstance(deps, NoDeps) and tag_of(deps) != lang["dependencies"]:
            _err(
                errors,
                f"{at}.language",
                f"{ep.language} function but {tag_of(deps)} dependencies",
                E_VALUE,
            )
    if not _PY_IDENT.match(ep.function):
        _err(errors, f"{at}.function", f"{ep.function!r} is not a valid function name", E_VALUE)
    for name in ("args_schema", "return_schema"):
        schema = getattr(ep, name)
        if schema is not None:
            _scan_secrets(schema, [name], at, errors)


def _scan_secrets(node: Any, segs: list[str | int], at: str, errors: list[IrError]) -> None:
    """Flag property names that look like credentials anywhere in a JSON Schema."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("properties", "patternProperties") and isinstance(value, dict):
                for prop in value:
                    if _SECRET_NAME.search(prop):
                        _err(
                            errors,
                            _sub(at, *segs, key, prop),
                            f"field {prop!r} looks like a secret",
                            E_SECRET_FIELD,
                            "pass secrets through the secrets drive, not function arguments",
                        )
            if key == "required" and isinstance(value, list):
                continue
            _scan_secrets(value, [*segs, key], at, errors)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            _scan_secrets(item, [*segs, i], at, errors)


def _check_resources(app: App, at: str, errors: list[IrError]) -> None:
    r = app.resources
    for field, value, low, high in (
        ("vcpus", r.vcpus, 1, 64),
        ("memory_mb", r.memory_mb, 64, 65536),
        ("boot_timeout_secs", r.boot_timeout_secs, 1, 3600),
    ):
        if not low <= value <= high:
            _err(errors, f"{at}.resources.{field}", f"{value} out of range {low}..{high}", E_VALUE)


def _check_deps(app: App, at: str, base_dir: Path | None, errors: list[IrError]) -> None:
    deps = app.dependencies
    if not isinstance(deps, PythonDeps | NodeDeps):
        return
    where = f"{at}.dependencies.lockfile"
    before = len(errors)
    _check_relative(deps.lockfile, where, errors)
    problem = lockfiles.name_problem(deps.lockfile, deps.tool)
    if problem:
        _err(errors, where, problem, E_UNPINNED_DEPS, _lock_hint(deps.tool))
    if len(errors) > before or base_dir is None or not isinstance(app.source, LocalPath):
        return
    path = base_dir / app.source.path / deps.lockfile
    problem = lockfiles.content_problem(path, deps.tool)
    if problem:
        _err(errors, where, problem, E_UNPINNED_DEPS, _lock_hint(deps.tool))


def _lock_hint(tool: str) -> str:
    return {
        "uv": "run `uv lock` and commit uv.lock",
        "pip-tools": "run `pip-compile --generate-hashes`",
        "pnpm": "run `pnpm install --lockfile-only`",
        "npm": "run `npm install --package-lock-only`",
        "yarn": "run `yarn install` and commit yarn.lock",
    }.get(tool, "commit a lockfile with exact versions and hashes")
