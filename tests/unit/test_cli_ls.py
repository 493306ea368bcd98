"""`mvmctl ls`'s HEALTH column: the worst service state, unhealthy services named."""

from __future__ import annotations

import pytest

from mvm.cli.ls_commands import health_summary


@pytest.mark.parametrize(
    ("health", "shown"),
    [
        ({}, "-"),
        ({"web": "healthy", "db": "healthy"}, "healthy"),
        ({"web": "healthy", "db": "unknown"}, "unknown"),
        ({"web": "unhealthy", "db": "unknown", "api": "unhealthy"}, "unhealthy:api,web"),
    ],
)
def test_health_summary(health: dict[str, str], shown: str) -> None:
    assert health_summary(health) == shown
