"""``--since`` for ``logs`` and ``events``: one reading of a time a user types.

A duration back from now (``30s``, ``5m``, ``2h``, ``1.5d``), Unix seconds, or an
RFC 3339 / ISO 8601 time (``2026-01-02T03:04:05Z``; no zone means UTC, as the times
both commands print are UTC). Each command keeps its own error code.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from mvm.engine.base.errors import ConfigError

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_since(text: str, now: float | None = None, *, code: str) -> float:
    """Unix seconds for ``text``; a :class:`ConfigError` with ``code`` if it is no time."""
    now = time.time() if now is None else now
    value = text.strip()
    if m := _DURATION.match(value):
        return now - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"--since {text!r} is neither a duration nor a time",
            code=code,
            hint="use 30s, 5m, 2h, 1d, 2026-01-02T03:04:05Z or Unix seconds",
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()
