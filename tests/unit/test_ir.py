"""Workload IR: strict parsing, stable error codes, JSON paths, canonical hash."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from mvm.engine.base.errors import ConfigError, IrError
from mvm.engine.ir import (
    LocalPath,
    PythonDeps,
    canonical_ir,
    ir_hash,
    parse_workload,
    supported_languages,
    validate,
    validate_text,
    workload_to_dict,
)

FIXTURES = Path(__file__).parent.parent / "fixtures"
HELLO_IR = FIXTURES / "ir" / "hello.json"
HELLO_DIR = FIXTURES / "hello"
HELLO_HASH = "c63313ca4993c7ce013449ab77c635f7f271466dff234631a32bba4bb1a1af01"
DIGEST = "sha256:" + "ab" * 32


def hello() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(HELLO_IR.read_text())
    return data


def errors_of(data: object, base_dir: Path | None = None) -> list[IrError]:
    with pytest.raises(IrError) as info:
        validate(data, base_dir=base_dir)
    errs = list(info.value.all_errors)
    assert errs[0] is info.value
    for err in errs:
        assert err.message.startswith(err.path + ": "), err.message
        assert err.path.startswith("$")
    return errs


def one_error(data: object, base_dir: Path | None = None) -> IrError:
    errs = errors_of(data, base_dir)
    assert len(errs) == 1, [e.one_line() for e in errs]
    return errs[0]


def test_hello_fixture_parses_and_hashes_to_its_canonical_bytes() -> None:
    raw = HELLO_IR.read_bytes()
    workload = validate(json.loads(raw), base_dir=HELLO_DIR)
    assert canonical_ir(workload) == raw
    assert ir_hash(workload) == HELLO_HASH == hashlib.sha256(raw).hexdigest()
    app = workload.apps[0]
    assert app.name == "hello"
    assert app.source == LocalPath("./src", include=("**",), exclude=())
    assert app.dependencies == PythonDeps(lockfile="uv.lock", tool="uv")
    assert isinstance(app.entrypoints[0].function, str)  # type: ignore[union-attr]


def test_pretty_fixture_with_defaults_omitted_hashes_the_same() -> None:
    pretty = validate_text((FIXTURES / "ir" / "hello.pretty.json").read_text())
    assert ir_hash(pretty) == HELLO_HASH


def test_irerror_is_a_config_error_with_path_and_code() -> None:
    data = hello()
    data["apps"][0]["resources"]["vcpus"] = "2"
    err = one_error(data)
    assert isinstance(err, ConfigError)
    assert err.code == "E_IR_TYPE"
    assert err.path == "$.apps[0].resources.vcpus"
    assert err.one_line().startswith(
        "error[E_IR_TYPE]: $.apps[0].resources.vcpus: expected an integer"
    )


@pytest.mark.parametrize("version", ["0.2", "1.0", 0.1, None, ["0.1"]])
def test_wrong_schema_version_is_reported_before_anything_else(version: object) -> None:
    data = hello()
    data["schema_version"] = version
    data["future_field"] = {"x": 1}  # a newer schema's field: not reported as unknown
    err = one_error(data)
    assert (err.code, err.path) == ("E_IR_SCHEMA_VERSION", "$.schema_version")


@pytest.mark.parametrize(
    ("where", "key", "path"),
    [
        ((), "extra", "$.extra"),
        (("apps", 0), "gpu", "$.apps[0].gpu"),
        (("apps", 0, "resources"), "gpus", "$.apps[0].resources.gpus"),
        (("apps", 0, "source"), "ref", "$.apps[0].source.ref"),
        (("apps", 0, "entrypoints", 0), "lang", "$.apps[0].entrypoints[0].lang"),
        (("apps", 0, "dependencies"), "hashes", "$.apps[0].dependencies.hashes"),
        (("apps", 0, "resources"), "bad key", '$.apps[0].resources["bad key"]'),
    ],
)
def test_unknown_fields_are_rejected_at_every_level(
    where: tuple[str | int, ...], key: str, path: str
) -> None:
    data = hello()
    node: Any = data
    for seg in where:
        node = node[seg]
    node[key] = 1
    err = one_error(data)
    assert (err.code, err.path) == ("E_IR_UNKNOWN_FIELD", path)


@pytest.mark.parametrize(
    ("where", "key", "path"),
    [
        ((), "id", "$.id"),
        ((), "apps", "$.apps"),
        (("apps", 0), "name", "$.apps[0].name"),
        (("apps", 0), "dependencies", "$.apps[0].dependencies"),
        (("apps", 0, "entrypoints", 0), "module", "$.apps[0].entrypoints[0].module"),
        (("apps", 0, "entrypoints", 0), "kind", "$.apps[0].entrypoints[0].kind"),
        (("apps", 0, "dependencies"), "lockfile", "$.apps[0].dependencies.lockfile"),
    ],
)
def test_missing_required_fields_are_named(
    where: tuple[str | int, ...], key: str, path: str
) -> None:
    data = hello()
    node: Any = data
    for seg in where:
        node = node[seg]
    del node[key]
    err = one_error(data)
    assert (err.code, err.path) == ("E_IR_MISSING_FIELD", path)


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda d: d["apps"][0]["resources"].update(vcpus=True), "$.apps[0].resources.vcpus"),
        (lambda d: d["apps"][0]["resources"].update(vcpus=1.0), "$.apps[0].resources.vcpus"),
        (lambda d: d["apps"][0].update(name=5), "$.apps[0].name"),
        (
            lambda d: d["apps"][0]["image"].update(packages="python3"),
            "$.apps[0].image.packages",
        ),
        (lambda d: d["apps"][0].update(env={"A": 1}), "$.apps[0].env.A"),
        (lambda d: d["apps"][0].update(threat_tier="paranoid"), "$.apps[0].threat_tier"),
        (
            lambda d: d["apps"][0]["entrypoints"][0].update(format="xml"),
            "$.apps[0].entrypoints[0].format",
        ),
        (lambda d: d.update(apps={"hello": 1}), "$.apps"),
        (lambda d: d.update(extensions={"x-big": 2**60}), '$.extensions["x-big"]'),
        (lambda d: d["apps"][0].update(source={"kind": 5, "path": "."}), "$.apps[0].source.kind"),
        (lambda d: d["apps"][0].update(source="."), "$.apps[0].source"),
    ],
)
def test_wrong_types_are_coded_e_ir_type(mutate: Any, path: str) -> None:
    data = hello()
    mutate(data)
    err = one_error(data)
    assert (err.code, err.path) == ("E_IR_TYPE", path)


def test_union_with_unknown_tag_or_no_tag() -> None:
    data = hello()
    data["apps"][0]["source"] = {"kind": "git", "url": "x"}
    err = one_error(data)
    assert (err.code, err.path) == ("E_IR_TYPE", "$.apps[0].source.kind")
    assert "local_path, nix_derivation, oci_image" in err.message
    data["apps"][0]["source"] = {"path": "."}
    err = one_error(data)
    assert (err.code, err.path) == ("E_IR_MISSING_FIELD", "$.apps[0].source.kind")


def test_the_old_externally_tagged_format_is_refused_with_a_hint() -> None:
    data = hello()
    data["apps"][0]["source"] = {"local_path": {"path": "."}}
    data["apps"][0]["dependencies"] = {"none": {}}
    errs = errors_of(data)
    assert [(e.code, e.path) for e in errs] == [
        ("E_IR_LEGACY_FORMAT", "$.apps[0].source"),
        ("E_IR_LEGACY_FORMAT", "$.apps[0].dependencies"),
    ]
    assert all(e.hint and '"kind"' in e.hint for e in errs)


def test_all_structural_errors_are_collected_in_document_order() -> None:
    data = hello()
    data["id"] = 7
    data["apps"][0]["resources"]["memory_mb"] = "lots"
    data["apps"][0]["bogus"] = True
    errs = errors_of(data)
    assert [(e.code, e.path) for e in errs] == [
        ("E_IR_TYPE", "$.id"),
        ("E_IR_TYPE", "$.apps[0].resources.memory_mb"),
        ("E_IR_UNKNOWN_FIELD", "$.apps[0].bogus"),
    ]


def test_unsupported_language_comes_from_the_data_file() -> None:
    assert {"python", "node"} <= set(supported_languages())
    data = hello()
    data["apps"][0]["entrypoints"][0]["language"] = "cobol"
    err = one_error(data)
    assert err.code == "E_UNSUPPORTED_LANGUAGE"
    assert err.path == "$.apps[0].entrypoints[0].language"
    assert "'cobol'" in err.message and "python" in err.message


@pytest.mark.parametrize(
    ("deps", "path"),
    [
        (
            {"kind": "python", "lockfile": "requirements.in", "tool": "pip-tools"},
            "$.apps[0].dependencies.lockfile",
        ),
        (
            {"kind": "python", "lockfile": "pyproject.toml", "tool": "uv"},
            "$.apps[0].dependencies.lockfile",
        ),
        (
            {"kind": "python", "lockfile": "poetry.lock", "tool": "uv"},
            "$.apps[0].dependencies.lockfile",
        ),
    ],
)
def test_a_file_that_is_not_a_lockfile_is_unpinned(deps: dict[str, Any], path: str) -> None:
    data = hello()
    data["apps"][0]["dependencies"] = deps
    err = one_error(data)
    assert (err.code, err.path) == ("E_UNPINNED_DEPS", path)
    assert err.hint


def test_node_deps_with_python_function_is_inconsistent() -> None:
    data = hello()
    data["apps"][0]["dependencies"] = {
        "kind": "node",
        "lockfile": "package-lock.json",
        "tool": "npm",
    }
    err = one_error(data)
    assert (err.code, err.path) == ("E_IR_VALUE", "$.apps[0].entrypoints[0].language")


def test_lockfile_content_is_checked_against_the_project_dir(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "uv.lock").write_text(
        'version = 1\n\n[[package]]\nname = "requests"\nversion = "2.32.3"\n'
        'source = { registry = "https://pypi.org/simple" }\n'
    )
    err = one_error(hello(), base_dir=tmp_path)
    assert (err.code, err.path) == ("E_UNPINNED_DEPS", "$.apps[0].dependencies.lockfile")
    assert "requests" in err.message
    (tmp_path / "src" / "uv.lock").unlink()
    err = one_error(hello(), base_dir=tmp_path)
    assert err.code == "E_UNPINNED_DEPS" and "not found" in err.message
    assert validate(hello()) is not None  # no base_dir: IR alone is fine


def test_secret_shaped_fields_in_schemas_are_refused() -> None:
    data = hello()
    fn = data["apps"][0]["entrypoints"][0]
    fn["args_schema"]["properties"]["auth"] = {
        "type": "object",
        "properties": {"api_key": {"type": "string"}, "region": {"type": "string"}},
    }
    fn["return_schema"] = {"type": "object", "properties": {"sessionToken": {"type": "string"}}}
    errs = errors_of(data)
    assert [(e.code, e.path) for e in errs] == [
        (
            "E_SECRET_FIELD",
            "$.apps[0].entrypoints[0].args_schema.properties.auth.properties.api_key",
        ),
        (
            "E_SECRET_FIELD",
            "$.apps[0].entrypoints[0].return_schema.properties.sessionToken",
        ),
    ]


def test_harmless_field_names_are_not_flagged() -> None:
    data = hello()
    props = data["apps"][0]["entrypoints"][0]["args_schema"]["properties"]
    props.update({"username": {}, "tokenizer_name": {}, "count": {}})
    # "tokenizer_name" contains "token": we prefer a false positive to a leaked secret.
    assert [e.path.rsplit(".", 1)[-1] for e in errors_of(data)] == ["tokenizer_name"]


@pytest.mark.parametrize(
    ("node", "expected_path"),
    [
        (
            {"kind": "oci_image", "reference": "docker.io/library/python:3.12"},
            "$.apps[0].source.digest",
        ),
        (
            {"kind": "oci_image", "reference": "python:3.12", "digest": "latest"},
            "$.apps[0].source.digest",
        ),
        (
            {"kind": "oci_image", "reference": "python:3.12", "digest": "sha256:abc"},
            "$.apps[0].source.digest",
        ),
        (
            {"kind": "oci_image", "reference": f"python@sha256:{'cd' * 32}", "digest": DIGEST},
            "$.apps[0].source.reference",
        ),
    ],
)
def test_oci_refs_need_a_digest(node: dict[str, Any], expected_path: str) -> None:
    data = hello()
    data["apps"][0]["source"] = node
    err = one_error(data)
    assert (err.code, err.path) == ("E_OCI_DIGEST", expected_path)


def test_oci_base_image_needs_a_digest_and_pinned_one_passes() -> None:
    data = hello()
    data["apps"][0]["image"] = {"kind": "oci_base", "reference": "python:3.12-slim"}
    err = one_error(data)
    assert (err.code, err.path) == ("E_OCI_DIGEST", "$.apps[0].image.digest")
    data["apps"][0]["image"] = {
        "kind": "oci_base",
        "reference": "python:3.12-slim",
        "digest": DIGEST,
    }
    validate(data)


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda d: d["apps"][0].update(name="Hello_World"), "$.apps[0].name"),
        (lambda d: d["apps"][0]["resources"].update(vcpus=0), "$.apps[0].resources.vcpus"),
        (
            lambda d: d["apps"][0]["resources"].update(memory_mb=10**6),
            "$.apps[0].resources.memory_mb",
        ),
        (lambda d: d["apps"][0].update(entrypoints=[]), "$.apps[0].entrypoints"),
        (
            lambda d: d["apps"][0].update(mounts=[{"volume": "nope", "path": "/data"}]),
            "$.apps[0].mounts[0].volume",
        ),
        (
            lambda d: d["apps"][0].update(source={"kind": "local_path", "path": "../elsewhere"}),
            "$.apps[0].source.path",
        ),
        (lambda d: d["apps"][0].update(env={"1BAD": "x"}), '$.apps[0].env["1BAD"]'),
        (lambda d: d.update(extensions={"tracing": True}), "$.extensions.tracing"),
        (lambda d: d.update(apps=[d["apps"][0], copy.deepcopy(d["apps"][0])]), "$.apps[1].name"),
        (
            lambda d: d["apps"][0].update(network={"mode": "nat", "ports": [70000]}),
            "$.apps[0].network.ports[0]",
        ),
    ],
)
def test_semantic_errors_are_coded_e_ir_value(mutate: Any, path: str) -> None:
    data = hello()
    mutate(data)
    err = one_error(data)
    assert (err.code, err.path) == ("E_IR_VALUE", path)


def test_only_one_primary_function() -> None:
    data = hello()
    second = copy.deepcopy(data["apps"][0]["entrypoints"][0])
    second["function"] = "wave"
    data["apps"][0]["entrypoints"].append(second)
    err = one_error(data)
    assert (err.code, err.path) == ("E_IR_VALUE", "$.apps[0].entrypoints[1].primary")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        '{"schema_version": "0.1", "schema_version": "0.1"}',
        '{"x": NaN}',
        '{"x": Infinity}',
        b"\xff\xfe\x00",
        "[" * 100_000,
    ],
)
def test_bad_json_text_is_e_ir_json(text: str | bytes) -> None:
    with pytest.raises(IrError) as info:
        validate_text(text)
    assert info.value.code == "E_IR_JSON"
    assert info.value.path == "$"


def test_top_level_must_be_an_object() -> None:
    err = one_error([hello()])
    assert (err.code, err.path) == ("E_IR_TYPE", "$")


def test_lone_surrogate_is_a_type_error_not_a_crash() -> None:
    err = one_error(json.loads('{"schema_version":"0.1","id":"\\ud800","apps":[]}'))
    assert (err.code, err.path) == ("E_IR_TYPE", "$.id")


def test_round_trip_is_stable_and_hash_tracks_meaning() -> None:
    workload = parse_workload(hello())
    again = parse_workload(json.loads(json.dumps(workload_to_dict(workload))))
    assert again == workload and ir_hash(again) == ir_hash(workload)
    changed = hello()
    changed["apps"][0]["resources"]["memory_mb"] = 257
    assert ir_hash(parse_workload(changed)) != ir_hash(workload)


def test_an_ir_over_the_size_cap_is_refused_before_parsing() -> None:
    from mvm.engine.ir.validation import MAX_IR_BYTES

    text = '{"x": "' + "a" * MAX_IR_BYTES + '"}'
    with pytest.raises(IrError) as info:
        validate_text(text)
    assert (info.value.code, info.value.path) == ("E_IR_TOO_LARGE", "$")


def test_every_semantic_problem_is_reported_with_its_path() -> None:
    data = hello()
    data["apps"][0]["entrypoints"][0]["language"] = "cobol"
    data["apps"][0]["resources"]["vcpus"] = 0
    data["apps"][0]["dependencies"]["lockfile"] = "requirements.in"
    errs = errors_of(data)
    assert [(e.code, e.path) for e in errs] == [
        ("E_UNSUPPORTED_LANGUAGE", "$.apps[0].entrypoints[0].language"),
        ("E_IR_VALUE", "$.apps[0].resources.vcpus"),
        ("E_UNPINNED_DEPS", "$.apps[0].dependencies.lockfile"),
    ]


def test_defaults_spelled_out_or_omitted_hash_the_same() -> None:
    data = hello()
    app = data["apps"][0]
    app.update(env={}, mounts=[], network=None, threat_tier="untrusted", addons=[])
    app["entrypoints"][0].update(extra_imports=[], working_dir="/app", concurrency=None)
    assert ir_hash(validate(data)) == HELLO_HASH
    app["threat_tier"] = "trusted"
    assert ir_hash(validate(data)) != HELLO_HASH
