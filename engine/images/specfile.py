"""Read an ImageSpec from a JSON file (the offline builder's input format).

Keys are ImageSpec's field names; unknown keys are rejected so a typo never
silently builds the wrong image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cattrs

from mvm.engine.base.errors import ConfigError
from mvm.engine.images.imagespec import HealthCheck, ImageSpec, Service, Uids

_conv = cattrs.Converter(forbid_extra_keys=True)


def _command(value: Any, _type: Any) -> Any:
    """A command is argv (a list of strings) or one shell string, as in mkGuest."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(a, str) for a in value):
        return tuple(value)
    raise ConfigError("command must be a list of strings or a string", code="E_SPEC_COMMAND")


_conv.register_structure_hook(str | tuple[str, ...], _command)
_conv.register_structure_hook(tuple[str, ...] | None, _command)


def spec_from_dict(data: dict[str, Any], *, origin: str = "spec") -> ImageSpec:
    try:
        return _conv.structure(data, ImageSpec)
    except ConfigError:
        raise
    except cattrs.BaseValidationError as exc:
        own = _own_error(exc)
        if own is not None:  # ImageSpec's own check (coded) ran inside cattrs
            raise own from None
        raise ConfigError(f"{origin}: {_describe(exc)}", code="E_SPEC_INVALID") from None


def _own_error(exc: BaseException) -> ConfigError | None:
    """The first coded ConfigError inside a cattrs validation error group, if any."""
    if isinstance(exc, ConfigError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _own_error(inner)
            if found is not None:
                return found
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return f"unknown key(s) {sorted(exc.extra_fields)}"
    if isinstance(exc, cattrs.BaseValidationError):
        notes = cattrs.transform_error(exc)
        return "; ".join(notes) if notes else str(exc)
    return str(exc)


def load_spec(path: Path) -> ImageSpec:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"spec file {path} does not exist", code="E_SPEC_MISSING") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}", code="E_SPEC_INVALID"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object", code="E_SPEC_INVALID")
    return spec_from_dict(data, origin=str(path))


__all__ = ["HealthCheck", "ImageSpec", "Service", "Uids", "load_spec", "spec_from_dict"]
