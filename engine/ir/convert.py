"""cattrs converters between IR classes and JSON values, strict in both directions.

cattrs is lenient by default (``int("1")``, a string is an iterable of characters);
an IR parser must not be, because two different documents that parse to the same
value would hash the same while meaning different things to a human reader. So
every leaf hook here checks the JSON type exactly, and every failure carries the
relative JSON path and a stable code; :func:`structure_workload` turns cattrs'
exception groups into :class:`IrError` s with absolute paths.
"""

from __future__ import annotations

import math
import re
import typing
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import attrs
import cattrs
import cattrs.gen
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)

from mvm.engine.base.errors import IrError
from mvm.engine.ir.model import (
    OMIT_AT_DEFAULT,
    UNION_TAGS,
    VARIANT_KIND,
    OciBase,
    OciImage,
    Workload,
)

# RFC 8785 (I-JSON) numbers are IEEE doubles: larger integers do not round-trip.
MAX_SAFE_INT = 2**53 - 1
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

E_TYPE = "E_IR_TYPE"
E_UNKNOWN = "E_IR_UNKNOWN_FIELD"
E_MISSING = "E_IR_MISSING_FIELD"
E_OCI_DIGEST = "E_OCI_DIGEST"
E_LEGACY = "E_IR_LEGACY_FORMAT"

Segment = str | int
T = TypeVar("T")


class Problem(Exception):
    """A leaf failure inside a hook: code, detail and the path below the hook's value."""

    def __init__(
        self,
        code: str,
        detail: str,
        segments: tuple[Segment, ...] = (),
        hint: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.segments = segments
        self.hint = hint


def json_path(segments: tuple[Segment, ...] | list[Segment]) -> str:
    out = "$"
    for seg in segments:
        if isinstance(seg, int):
            out += f"[{seg}]"
        elif _IDENT.match(seg):
            out += f".{seg}"
        else:
            out += "[" + _quote(seg) + "]"
    return out


def _quote(text: str) -> str:
    escaped = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return '"' + escaped.replace('"', '\\"') + '"'


def json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _expect(kind: str, value: object) -> Problem:
    return Problem(E_TYPE, f"expected {kind}, got {json_type(value)}")


def check_string(value: object) -> str:
    if not isinstance(value, str):
        raise _expect("a string", value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Problem(E_TYPE, "string holds an unpaired UTF-16 surrogate") from None
    return value


def check_key(key: object) -> str:
    if not isinstance(key, str):
        raise Problem(E_TYPE, f"object key must be a string, got {json_type(key)}")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise Problem(E_TYPE, "object key holds an unpaired UTF-16 surrogate") from None
    return key


def check_json(value: object, segments: tuple[Segment, ...] = ()) -> Any:
    """Accept only I-JSON values (what RFC 8785 can canonicalize); returns a plain copy."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INT:
            raise Problem(E_TYPE, "integer outside the I-JSON range (|n| < 2**53)", segments)
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Problem(E_TYPE, "number must be finite", segments)
        if value.is_integer() and abs(value) > MAX_SAFE_INT:
            # JCS writes it as an integer, which would not parse back as the same value.
            raise Problem(E_TYPE, "number outside the I-JSON range (|n| < 2**53)", segments)
        return value
    if isinstance(value, str):
        try:
            return check_string(value)
        except Problem as exc:
            raise Problem(exc.code, exc.detail, segments) from None
    if isinstance(value, list | tuple):
        return [check_json(item, (*segments, i)) for i, item in enumerate(value)]
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            try:
                check_key(key)
            except Problem as exc:
                raise Problem(exc.code, exc.detail, segments) from None
            out[key] = check_json(item, (*segments, key))
        return out
    raise Problem(E_TYPE, f"{type(value).__name__} is not a JSON value", segments)


def _structure_str(value: object, _t: object) -> str:
    return check_string(value)


def _structure_int(value: object, _t: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _expect("an integer", value)
    if abs(value) > MAX_SAFE_INT:
        raise Problem(E_TYPE, "integer outside the I-JSON range (|n| < 2**53)")
    return value


def _structure_bool(value: object, _t: object) -> bool:
    if not isinstance(value, bool):
        raise _expect("true or false", value)
    return value


def _structure_any(value: object, _t: object) -> Any:
    return check_json(value)


def _is_literal(t: Any) -> bool:
    return typing.get_origin(t) is Literal


def _literal_hook(t: Any) -> Callable[[object, object], object]:
    allowed = typing.get_args(t)

    def hook(value: object, _t: object) -> object:
        if isinstance(value, str) and value in allowed:
            return value
        choices = ", ".join(repr(a) for a in allowed)
        if isinstance(value, str):
            raise Problem(E_TYPE, f"{value!r} is not one of {choices}")
        raise _expect(f"one of {choices}", value)

    return hook


def _is_homogeneous_tuple(t: Any) -> bool:
    args = typing.get_args(t)
    return typing.get_origin(t) is tuple and len(args) == 2 and args[1] is Ellipsis


def _is_str_dict(t: Any) -> bool:
    args = typing.get_args(t)
    return typing.get_origin(t) is dict and len(args) == 2 and args[0] is str


def _is_attrs(t: Any) -> bool:
    return isinstance(t, type) and attrs.has(t)


def _is_union(t: Any) -> bool:
    try:
        return t in UNION_TAGS
    except TypeError:
        return False


def _note_index(exc: Exception, index: Segment, t: Any) -> Exception:
    exc.__notes__ = [
        *getattr(exc, "__notes__", []),
        IterableValidationNote(f"Structuring {t} @ index {index!r}", index, t),
    ]
    return exc


def _note_attr(exc: Exception, name: str, t: Any) -> Exception:
    exc.__notes__ = [
        *getattr(exc, "__notes__", []),
        AttributeValidationNote(f"Structuring class {t} @ attribute {name}", name, t),
    ]
    return exc


def make_converters() -> tuple[cattrs.Converter, cattrs.Converter]:
    """(structuring converter, unstructuring converter)."""
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook(str, _structure_str)
    conv.register_structure_hook(int, _structure_int)
    conv.register_structure_hook(bool, _structure_bool)
    conv.register_structure_hook(Any, _structure_any)
    conv.register_structure_hook_factory(_is_literal, _literal_hook)

    def tuple_factory(t: Any) -> Callable[[object, object], tuple[Any, ...]]:
        elem_t = typing.get_args(t)[0]

        def hook(value: object, _t: object) -> tuple[Any, ...]:
            if not isinstance(value, list):
                raise _expect("an array", value)
            elem = conv.get_structure_hook(elem_t)
            out: list[Any] = []
            errors: list[Exception] = []
            for i, item in enumerate(value):
                try:
                    out.append(elem(item, elem_t))
                except Exception as exc:
                    errors.append(_note_index(exc, i, t))
            if errors:
                raise IterableValidationError(f"While structuring {t}", errors, t)
            return tuple(out)

        return hook

    def dict_factory(t: Any) -> Callable[[object, object], dict[str, Any]]:
        val_t = typing.get_args(t)[1]

        def hook(value: object, _t: object) -> dict[str, Any]:
            if not isinstance(value, dict):
                raise _expect("an object", value)
            elem = conv.get_structure_hook(val_t)
            out: dict[str, Any] = {}
            errors: list[Exception] = []
            for key, item in value.items():
                try:
                    check_key(key)
                    out[key] = elem(item, val_t)
                except Exception as exc:
                    errors.append(_note_index(exc, key, t))
            if errors:
                raise IterableValidationError(f"While structuring {t}", errors, t)
            return out

        return hook

    def attrs_factory(t: Any) -> Callable[[object, object], Any]:
        inner = cattrs.gen.make_dict_structure_fn(
            t, conv, _cattrs_forbid_extra_keys=True, _cattrs_detailed_validation=True
        )

        def hook(value: object, _t: object) -> Any:
            if not isinstance(value, dict):
                raise _expect("an object", value)
            for key in value:
                check_key(key)
            return inner(value, t)

        return hook

    def union_factory(t: Any) -> Callable[[object, object], Any]:
        tags = UNION_TAGS[t]
        names = ", ".join(tags)

        def hook(value: object, _t: object) -> Any:
            if not isinstance(value, dict):
                raise _expect(f'an object with "kind" one of {names}', value)
            for key in value:
                check_key(key)
            if "kind" not in value:
                if len(value) == 1 and next(iter(value)) in tags:
                    raise Problem(
                        E_LEGACY,
                        f"externally tagged {next(iter(value))!r} (an older mvm IR format)",
                        hint='write {"kind": "<variant>", ...fields} (re-run `mvmctl emit`)',
                    )
                raise Problem(E_MISSING, f"required field is missing; one of {names}", ("kind",))
            kind = value["kind"]
            if not isinstance(kind, str) or kind not in tags:
                shown = repr(kind) if isinstance(kind, str) else json_type(kind)
                raise Problem(E_TYPE, f"{shown} is not one of {names}", ("kind",))
            rest = {k: v for k, v in value.items() if k != "kind"}
            return conv.structure(rest, tags[kind])

        return hook

    conv.register_structure_hook_factory(_is_homogeneous_tuple, tuple_factory)
    conv.register_structure_hook_factory(_is_str_dict, dict_factory)
    conv.register_structure_hook_factory(_is_union, union_factory)
    conv.register_structure_hook_factory(_is_attrs, attrs_factory)

    out = cattrs.Converter()

    def attrs_unstructure_factory(t: Any) -> Callable[[Any], dict[str, Any]]:
        omit = OMIT_AT_DEFAULT.get(t, frozenset())
        fields = attrs.fields(t)
        kind = VARIANT_KIND.get(t)

        def hook(value: Any) -> dict[str, Any]:
            body: dict[str, Any] = {} if kind is None else {"kind": kind}
            for f in fields:
                item = getattr(value, f.name)
                if f.name in omit and item == _default(f):
                    continue
                body[f.name] = out.unstructure(item)
            return body

        return hook

    out.register_unstructure_hook_factory(_is_attrs, attrs_unstructure_factory)
    return conv, out


def _default(field: Any) -> Any:
    default = field.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        return default.factory()
    return default


STRUCTURE, UNSTRUCTURE = make_converters()


def structure_workload(data: dict[str, Any]) -> Workload:
    """Structure ``data`` or raise its first IrError; ``.all_errors`` holds every one."""
    return structure_strict(data, Workload)


def structure_strict(data: object, cls: type[T]) -> T:
    """Structure a JSON value into an attrs class with the IR's strict rules."""
    try:
        return STRUCTURE.structure(data, cls)
    except Exception as exc:
        errors: list[IrError] = []
        _collect(exc, [], errors, None)
        if not errors:  # pragma: no cover - _collect always reports at least one leaf
            errors.append(IrError("$", str(exc), code=E_TYPE))
        first = errors[0]
        first.all_errors = tuple(errors)
        raise first from None


def _segments_from_notes(exc: BaseException) -> list[Segment]:
    segs: list[Segment] = []
    for note in getattr(exc, "__notes__", []):
        if isinstance(note, AttributeValidationNote):
            segs.append(note.name)
        elif isinstance(note, IterableValidationNote):
            segs.append(note.index)
    return segs


def _collect(
    exc: BaseException, path: list[Segment], out: list[IrError], cls: type[Any] | None
) -> None:
    if isinstance(exc, ClassValidationError | IterableValidationError):
        child_cls = exc.cl if isinstance(exc, ClassValidationError) else None
        for child in exc.exceptions:
            _collect(child, [*path, *_segments_from_notes(child)], out, child_cls)
        return
    if isinstance(exc, Problem):
        where = json_path([*path, *exc.segments])
        out.append(IrError(where, exc.detail, code=exc.code, hint=exc.hint))
    elif isinstance(exc, ForbiddenExtraKeysError):
        for name in sorted(exc.extra_fields):
            out.append(IrError(json_path([*path, name]), "unknown field", code=E_UNKNOWN))
    elif isinstance(exc, KeyError):
        name = str(exc.args[0]) if exc.args else "?"
        if cls in (OciImage, OciBase) and name == "digest":
            out.append(
                IrError(
                    json_path(path),
                    "OCI reference has no digest",
                    code=E_OCI_DIGEST,
                    hint="pin it with digest 'sha256:<64 hex>' (docker buildx imagetools inspect)",
                )
            )
        else:
            out.append(IrError(json_path(path), "required field is missing", code=E_MISSING))
    else:
        out.append(IrError(json_path(path), str(exc) or type(exc).__name__, code=E_TYPE))


def unstructure(value: Any) -> Any:
    """IR object -> plain JSON value (lists, dicts, str, int, bool, None)."""
    return _listify(UNSTRUCTURE.unstructure(value))


def _listify(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_listify(v) for v in value]
    if isinstance(value, dict):
        return {k: _listify(v) for k, v in value.items()}
    return value
