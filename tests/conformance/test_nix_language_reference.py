"""The beginner guide's Nix language quick reference, evaluated as pasted.

Each snippet is wrapped only as far as ``nix-instantiate --eval`` needs (a ``let`` for the
definitions a line refers to); the value the guide prints in its comment is the assertion.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

DOC = "nix-beginners-guide.txt"


def _eval(expr: str) -> Any:
    out = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "--store", "dummy://", "-E", expr],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


CASES = [
    (
        "string interpolation with let",
        """let
port = 8080;
host = "0.0.0.0";
in
"${host}:${toString port}" # "0.0.0.0:8080\"""",
        "0.0.0.0:8080",
    ),
    (
        "single-argument function",
        """let
greet = name: "Hello ${name}";
in greet "world" # "Hello world\"""",
        "Hello world",
    ),
    (
        "curried function",
        """let
add = a: b: a + b;
in add 1 2 # 3""",
        3,
    ),
    (
        "attribute set argument",
        """let
f = { name, port }: "${name}:${toString port}";
in f { name = "app"; port = 8080; } # "app:8080\"""",
        "app:8080",
    ),
    (
        "inherit",
        """let system = "aarch64-linux";
in { inherit system; }""",
        {"system": "aarch64-linux"},
    ),
    (
        "values",
        """[ "hello" 42 true null [ 1 2 3 ] { a = 1; b = 2; } ]""",
        ["hello", 42, True, None, [1, 2, 3], {"a": 1, "b": 2}],
    ),
    (
        "multi-line string",
        """''
multi-line
string
'' # multi-line string (two single quotes)""",
        "multi-line\nstring\n",
    ),
]


@pytest.mark.parametrize(("example", "expr", "expected"), CASES, ids=[c[0] for c in CASES])
def test_quick_reference(example: str, expr: str, expected: Any, request: Any) -> None:
    request.node.add_marker(pytest.mark.seed(DOC, f"Nix quick reference: {example}"))
    outcome = request.getfixturevalue("seed_outcome")
    assert _eval(expr) == expected
    outcome.works(f"nix-instantiate --eval gives {json.dumps(expected)}")
