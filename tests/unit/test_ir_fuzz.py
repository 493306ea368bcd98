"""Property tests: the IR parser never crashes, and equivalent documents hash the same."""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mvm.engine.base.errors import IrError
from mvm.engine.ir import (
    App,
    CommandEntrypoint,
    FunctionEntrypoint,
    LocalPath,
    Mount,
    Network,
    NixDerivation,
    NixPackages,
    NoDeps,
    OciBase,
    OciImage,
    PythonDeps,
    Resources,
    Volume,
    Workload,
    canonical_json,
    ir_hash,
    parse_workload,
    validate,
    validate_text,
    workload_to_dict,
)

HELLO = json.loads((Path(__file__).parent.parent / "fixtures" / "ir" / "hello.json").read_text())
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
# Keys that the schema knows, so random documents get past the first level sometimes.
KNOWN_KEYS = sorted(
    {
        "schema_version",
        "id",
        "apps",
        "volumes",
        "extensions",
        "name",
        "source",
        "image",
        "entrypoints",
        "dependencies",
        "env",
        "mounts",
        "network",
        "resources",
        "threat_tier",
        "addons",
        "local_path",
        "oci_image",
        "digest",
        "reference",
        "kind",
        "include",
        "exclude",
        "path",
        "function",
        "language",
        "python",
        "none",
        "lockfile",
        "tool",
        "vcpus",
    }
)
keys = st.sampled_from(KNOWN_KEYS) | st.text(max_size=8)


def outcome(call: Any) -> Workload | IrError:
    """Run the parser; anything other than a Workload or a coded IrError fails the test."""
    try:
        result = call()
    except IrError as err:
        assert err.code.startswith("E_"), err.code
        assert err.message.startswith(err.path + ": ")
        for other in err.all_errors:
            assert other.code.startswith("E_") and other.path.startswith("$")
        return err
    assert isinstance(result, Workload)
    # Anything accepted must canonicalize and survive a round trip unchanged.
    again = parse_workload(json.loads(canonical_json(workload_to_dict(result))))
    assert ir_hash(again) == ir_hash(result)
    return result


@FUZZ
@given(st.dictionaries(keys, json_values, max_size=6) | json_values)
def test_random_json_values_give_only_coded_errors(data: Any) -> None:
    outcome(lambda: validate(data))


@FUZZ
@given(st.text(max_size=200) | st.binary(max_size=200).map(bytes))
def test_random_text_gives_only_coded_errors(text: str | bytes) -> None:
    outcome(lambda: validate_text(text))


def _nodes(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _nodes(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _nodes(v, (*path, i))
    return out


HELLO_NODES = _nodes(HELLO)


@FUZZ
@given(
    target=st.sampled_from(HELLO_NODES),
    action=st.sampled_from(["replace", "delete", "add_key", "wrap"]),
    key=keys,
    value=json_values,
)
def test_mutated_hello_gives_only_coded_errors(
    target: tuple[Any, ...], action: str, key: str, value: Any
) -> None:
    doc = copy.deepcopy(HELLO)
    if not target:
        doc = value if action == "replace" else {**doc, key: value}
    else:
        parent: Any = doc
        for seg in target[:-1]:
            parent = parent[seg]
        last = target[-1]
        if action == "replace":
            parent[last] = value
        elif action == "delete":
            del parent[last]
        elif action == "add_key" and isinstance(parent[last], dict):
            parent[last][key] = value
        else:
            parent[last] = [parent[last]]
    outcome(lambda: validate(doc))


# --- equivalence: valid workloads generated from the model -------------------------

# Small alphabets instead of regexes: generation stays fast, names stay valid.
names = st.text("abcxyz019-", min_size=1, max_size=8).filter(lambda s: s[0] != "-")
idents = st.text("abc_xyz019", min_size=1, max_size=8).filter(lambda s: not s[0].isdigit())
safe_text = st.text(st.characters(codec="utf-8"), max_size=10)
digests = st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex())
env_names = st.text("ABCXYZ_019", min_size=1, max_size=6).filter(lambda s: not s[0].isdigit())

sources = (
    st.builds(LocalPath, path=st.sampled_from([".", "src", "app/code"]))
    | st.builds(NixDerivation, expr=safe_text)
    | st.builds(
        OciImage, reference=st.sampled_from(["python:3.12", "ghcr.io/x/y:1"]), digest=digests
    )
)
images = st.builds(NixPackages, packages=st.lists(names, max_size=3).map(tuple)) | st.builds(
    OciBase, reference=st.just("debian:12"), digest=digests
)
functions = st.builds(
    FunctionEntrypoint,
    language=st.just("python"),
    module=idents,
    function=idents,
    format=st.sampled_from(["json", "msgpack"]),
    primary=st.just(False),
    args_schema=st.none() | st.just({"type": "object", "properties": {"n": {"type": "integer"}}}),
    return_schema=st.none() | st.just({"type": "number", "maximum": 1.5e3}),
    extra_imports=st.lists(idents, max_size=2).map(tuple),
    working_dir=st.sampled_from(["/app", "/srv"]),
)
commands = st.builds(
    CommandEntrypoint, command=st.lists(safe_text.filter(bool), min_size=1, max_size=3).map(tuple)
)
deps_st = st.just(NoDeps()) | st.builds(PythonDeps, lockfile=st.just("uv.lock"), tool=st.just("uv"))


@st.composite
def workloads(draw: st.DrawFn) -> Workload:
    vol_names = draw(st.lists(names, unique=True, max_size=2))
    apps = []
    for app_name in draw(st.lists(names, unique=True, min_size=1, max_size=2)):
        apps.append(
            App(
                name=app_name,
                source=draw(sources),
                image=draw(images),
                entrypoints=tuple(draw(st.lists(functions | commands, min_size=1, max_size=3))),
                dependencies=draw(deps_st),
                env=draw(st.dictionaries(env_names, safe_text, max_size=3)),
                mounts=tuple(Mount(volume=v, path=f"/mnt/{v}") for v in vol_names),
                network=draw(
                    st.none()
                    | st.builds(
                        Network,
                        mode=st.sampled_from(["none", "nat"]),
                        ports=st.lists(st.integers(1, 65535), max_size=2).map(tuple),
                    )
                ),
                resources=Resources(
                    vcpus=draw(st.integers(1, 64)),
                    memory_mb=draw(st.integers(64, 65536)),
                    boot_timeout_secs=draw(st.integers(1, 3600)),
                ),
                threat_tier=draw(st.sampled_from(["trusted", "untrusted"])),
                addons=tuple(draw(st.lists(names, max_size=2))),
            )
        )
    return Workload(
        schema_version="0.1",
        id=draw(names),
        apps=tuple(apps),
        volumes=tuple(Volume(name=v, size_mb=draw(st.integers(1, 4096))) for v in vol_names),
        extensions=draw(
            st.dictionaries(
                st.sampled_from(["x-a", "com.example.b"]),
                json_values.filter(lambda v: _finite(v)),
                max_size=2,
            )
        ),
    )


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value) and not (value.is_integer() and abs(value) >= 2**53)
    if isinstance(value, int) and not isinstance(value, bool):
        return abs(value) < 2**53
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


DEFAULTS = {
    "env": {},
    "mounts": [],
    "addons": [],
    "threat_tier": "untrusted",
    "network": None,
    "concurrency": None,
    "extra_imports": [],
    "working_dir": "/app",
    "include": ["**"],
    "exclude": [],
    "volumes": [],
    "extensions": {},
    "format": "json",
    "primary": False,
    "args_schema": None,
    "return_schema": None,
}


def _reshape(value: Any, rng: random.Random) -> Any:
    """An equivalent document: shuffled keys, some default-valued fields omitted."""
    if isinstance(value, list):
        return [_reshape(v, rng) for v in value]
    if isinstance(value, dict):
        items = [
            (k, _reshape(v, rng))
            for k, v in value.items()
            if not (k in DEFAULTS and DEFAULTS[k] == v and rng.random() < 0.5)
        ]
        rng.shuffle(items)
        return dict(items)
    return value


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    workload=workloads(),
    seed=st.integers(0, 2**32),
    indent=st.sampled_from([None, 0, 2, "\t"]),
    ascii_only=st.booleans(),
)
def test_equivalent_documents_hash_the_same(
    workload: Workload, seed: int, indent: int | str | None, ascii_only: bool
) -> None:
    reference = ir_hash(workload)
    doc = _reshape(workload_to_dict(workload), random.Random(seed))
    text = json.dumps(doc, indent=indent, ensure_ascii=ascii_only)
    parsed = validate_text(text)
    assert parsed == workload
    assert ir_hash(parsed) == reference
    # Canonical bytes are a fixed point.
    canon = canonical_json(workload_to_dict(parsed))
    assert ir_hash(validate_text(canon)) == reference


@settings(max_examples=100, deadline=None)
@given(workload=workloads(), bump=st.integers(1, 100))
def test_a_meaningful_change_changes_the_hash(workload: Workload, bump: int) -> None:
    doc = workload_to_dict(workload)
    doc["apps"][0]["resources"]["boot_timeout_secs"] = (
        doc["apps"][0]["resources"]["boot_timeout_secs"] % 3600 + bump
    )
    if doc["apps"][0]["resources"]["boot_timeout_secs"] > 3600:
        doc["apps"][0]["resources"]["boot_timeout_secs"] = 1
    changed = validate(doc)
    assert ir_hash(changed) != ir_hash(workload)
