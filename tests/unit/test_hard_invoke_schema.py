"""invoke enforces the IR's args_schema/return_schema on the host (issue 15):
``name: 5`` against ``{"name": {"type": "string"}}`` is E_FUNCTION_ARGS before any
request reaches the guest; a result outside return_schema is E_FUNCTION_RETURN."""

from __future__ import annotations

import json
from typing import Any, cast

import anyio
import attrs
import pytest

from mvm.backends.guest.client import AgentClient
from mvm.engine.base.errors import ConfigError, MvmError
from mvm.engine.images.invoke_schema import FunctionSchemas
from mvm.engine.invoke import invoke

ARGS = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "times": {"type": "integer", "minimum": 1}},
    "required": ["name"],
    "additionalProperties": False,
}
RETURNS = {"type": "string"}


@attrs.define
class _Result:
    stdout: bytes
    stderr: bytes = b""
    code: int = 0


@attrs.define
class FakeAgent:
    """Answers every run with ``reply`` and records what was sent."""

    reply: Any
    sent: list[bytes] = attrs.Factory(list)

    async def run(self, request: bytes, *, timeout: float) -> _Result:
        self.sent.append(request)
        return _Result(json.dumps(self.reply).encode())  # the seed: the value, not wrapped


def _call(agent: FakeAgent, kwargs: dict[str, Any], args: tuple[Any, ...] = ()) -> Any:
    schemas = FunctionSchemas(ARGS, RETURNS)

    async def go() -> Any:
        return await invoke(cast(AgentClient, agent), args, kwargs, schemas=schemas)

    return anyio.run(go)


def test_valid_call_passes() -> None:
    agent = FakeAgent("hello, Alice")
    assert _call(agent, {"name": "Alice"}) == "hello, Alice"
    assert len(agent.sent) == 1


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"name": 5}, "name: 5 is not of type 'string'"),
        ({}, "'name' is a required property"),
        ({"name": "a", "times": 0}, "times: 0 is less than the minimum of 1"),
        ({"name": "a", "extra": 1}, "Additional properties are not allowed"),
    ],
)
def test_bad_arguments_refused_before_sending(kwargs: dict[str, Any], needle: str) -> None:
    agent = FakeAgent("unused")
    with pytest.raises(ConfigError) as info:
        _call(agent, kwargs)
    assert info.value.code == "E_FUNCTION_ARGS"
    assert needle in info.value.message
    assert agent.sent == [], "nothing may reach the guest"


def test_every_problem_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        _call(FakeAgent("x"), {"name": 5, "times": "x"})
    assert "name:" in info.value.message and "times:" in info.value.message


def test_positional_args_against_object_schema_refused() -> None:
    with pytest.raises(ConfigError) as info:
        _call(FakeAgent("x"), {}, ("Alice",))
    assert info.value.code == "E_FUNCTION_ARGS"


def test_bad_return_value_is_coded() -> None:
    with pytest.raises(MvmError) as info:
        _call(FakeAgent(5), {"name": "Alice"})
    assert info.value.code == "E_FUNCTION_RETURN"


def test_no_schema_no_check() -> None:
    agent = FakeAgent(5)

    async def go() -> Any:
        return await invoke(cast(AgentClient, agent), (), {"name": 5})

    assert anyio.run(go) == 5
