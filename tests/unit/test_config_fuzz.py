"""Property tests (issue 15): the mvm.toml and spec-JSON validators never crash.

Whatever a user writes, ``check_mvm_toml`` answers with coded ConfigErrors (all of
them) or a config, and ``load_spec`` with a coded ConfigError or an ImageSpec: never
another exception, so the CLI's one-line contract holds. The number of cases each
property ran is printed (``-s``) and asserted, so a silently skipped property fails.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mvm.engine.base.errors import ConfigError
from mvm.engine.images.specfile import load_spec
from mvm.engine.request.mvmtoml import check_mvm_toml

CASES = {"toml": 0, "spec": 0}

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=40)
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=25,
)
_TOML_KEYS = ("flake", "profile", "name", "vcpus", "memory_mib", "ports", "volumes", "hypervisor")
_SPEC_KEYS = (
    "name", "command", "shell", "services", "packages", "vcpus", "memory_mib", "dev",
    "uids", "health_checks", "extra_files", "host_files", "hypervisor", "seccomp",
)  # fmt: skip


def _toml_value(value: Any) -> str:
    """Our own tiny TOML writer for fuzz values (tomllib only reads)."""
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value) if value == value and abs(value) != float("inf") else "nan"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.dictionaries(st.sampled_from(_TOML_KEYS) | st.text(max_size=10), _json, max_size=6),
    st.text(max_size=200),
)
def test_mvm_toml_gives_a_config_or_coded_errors(
    tmp_path: Path, doc: dict[str, Any], raw: str
) -> None:
    CASES["toml"] += 1
    for text in ("\n".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in doc.items()), raw):
        path = tmp_path / "mvm.toml"
        path.write_text(text)
        config, problems = check_mvm_toml(path)
        assert all(isinstance(p, ConfigError) and p.code for p in problems)
        assert (config is None) == bool(problems)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.dictionaries(st.sampled_from(_SPEC_KEYS) | st.text(max_size=10), _json, max_size=7))
def test_spec_json_gives_a_spec_or_one_coded_error(tmp_path: Path, doc: dict[str, Any]) -> None:
    CASES["spec"] += 1
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(doc))
    try:
        load_spec(path)
    except ConfigError as exc:
        assert exc.code and exc.code.startswith("E_")


def test_the_properties_ran() -> None:
    print(f"\nfuzz cases run: mvm.toml {CASES['toml']}, spec JSON {CASES['spec']}")
    assert CASES["toml"] >= 100 and CASES["spec"] >= 100, CASES
