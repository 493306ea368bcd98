"""Workload IR, schema 0.1: the typed form of the document users emit and we hash.

Tagged unions (source, image, entrypoint, dependencies) are *internally tagged*
by a ``"kind"`` field — ``{"kind": "local_path", "path": "./src", ...}`` — the
wire format of the original's ``crates/mvm-ir`` (the seed's printed IR).
Every class is frozen: an IR value is hashed, and a hashed value must not change.
Fields with defaults may be omitted in a document; the canonical form writes
exactly the fields the seed prints (see ``canonical.OMIT_AT_DEFAULT``), so a
document and its fully spelled-out twin hash the same.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

SCHEMA_VERSION = "0.1"

FunctionFormat = Literal["json", "msgpack"]
NetworkMode = Literal["none", "nat"]
ThreatTier = Literal["untrusted", "trusted"]
PythonTool = Literal["uv", "pip-tools"]
NodeTool = Literal["pnpm", "npm", "yarn"]


# --- source: where the app's code comes from ---------------------------------------


@attrs.frozen
class LocalPath:
    """A directory relative to the IR document's directory (the project root)."""

    path: str
    include: tuple[str, ...] = ("**",)
    exclude: tuple[str, ...] = ()


@attrs.frozen
class NixDerivation:
    """A Nix expression, evaluated inside the same flake, that produces the source."""

    expr: str


@attrs.frozen
class OciImage:
    reference: str
    digest: str


Source = LocalPath | NixDerivation | OciImage


# --- image: what the guest root filesystem is built from ---------------------------


@attrs.frozen
class NixPackages:
    packages: tuple[str, ...]


@attrs.frozen
class OciBase:
    reference: str
    digest: str


Image = NixPackages | OciBase


# --- entrypoints -------------------------------------------------------------------


@attrs.frozen
class CommandEntrypoint:
    command: tuple[str, ...]
    working_dir: str = "/app"
    env: dict[str, str] = attrs.field(factory=dict)


@attrs.frozen
class FunctionEntrypoint:
    language: str
    module: str
    function: str
    format: FunctionFormat = "json"
    primary: bool = False
    args_schema: dict[str, Any] | None = None
    return_schema: dict[str, Any] | None = None
    # ADR-0011 warm-pool block, copied verbatim into runtime.json; present => longrunning.
    concurrency: dict[str, Any] | None = None
    extra_imports: tuple[str, ...] = ()
    working_dir: str = "/app"


Entrypoint = CommandEntrypoint | FunctionEntrypoint


# --- dependencies ------------------------------------------------------------------


@attrs.frozen
class PythonDeps:
    lockfile: str
    tool: PythonTool = "uv"


@attrs.frozen
class NodeDeps:
    lockfile: str
    tool: NodeTool = "npm"


@attrs.frozen
class NoDeps:
    """Explicitly no third-party dependencies (``{"kind": "none"}``)."""


Dependencies = PythonDeps | NodeDeps | NoDeps


# --- the rest of an app ------------------------------------------------------------


@attrs.frozen
class Mount:
    volume: str
    path: str
    read_only: bool = False


@attrs.frozen
class Network:
    mode: NetworkMode = "none"
    ports: tuple[int, ...] = ()


@attrs.frozen
class Resources:
    vcpus: int = 1
    memory_mb: int = 256
    boot_timeout_secs: int = 30


@attrs.frozen
class App:
    name: str
    source: Source
    image: Image
    entrypoints: tuple[Entrypoint, ...]
    dependencies: Dependencies
    env: dict[str, str] = attrs.field(factory=dict)
    mounts: tuple[Mount, ...] = ()
    network: Network | None = None
    resources: Resources = attrs.field(factory=Resources)
    threat_tier: ThreatTier = "untrusted"
    addons: tuple[str, ...] = ()


@attrs.frozen
class Volume:
    name: str
    size_mb: int


@attrs.frozen
class Workload:
    schema_version: str
    id: str
    apps: tuple[App, ...]
    volumes: tuple[Volume, ...] = ()
    extensions: dict[str, Any] = attrs.field(factory=dict)


# JSON tag of each union variant. Order matters only for error messages.
SOURCE_TAGS: dict[str, type[Any]] = {
    "local_path": LocalPath,
    "nix_derivation": NixDerivation,
    "oci_image": OciImage,
}
IMAGE_TAGS: dict[str, type[Any]] = {"nix_packages": NixPackages, "oci_base": OciBase}
ENTRYPOINT_TAGS: dict[str, type[Any]] = {
    "command": CommandEntrypoint,
    "function": FunctionEntrypoint,
}
DEPENDENCY_TAGS: dict[str, type[Any]] = {"python": PythonDeps, "node": NodeDeps, "none": NoDeps}

UNION_TAGS: dict[Any, dict[str, type[Any]]] = {
    Source: SOURCE_TAGS,
    Image: IMAGE_TAGS,
    Entrypoint: ENTRYPOINT_TAGS,
    Dependencies: DEPENDENCY_TAGS,
}

# The ``"kind"`` each variant class is written with.
VARIANT_KIND: dict[type[Any], str] = {
    cls: tag for tags in UNION_TAGS.values() for tag, cls in tags.items()
}


def tag_of(value: object) -> str:
    """The JSON tag of a union variant instance."""
    for tags in UNION_TAGS.values():
        for tag, cls in tags.items():
            if type(value) is cls:
                return tag
    raise TypeError(f"{type(value).__name__} is not an IR union variant")


# The canonical form's omission rule: these fields are left out when they hold their
# default, every other field is always written. The set is chosen so the SDKs emit the
# seed's printed IR byte for byte: a function entrypoint prints language, module,
# function, format and primary; an app omits env, mounts, network, threat_tier and
# addons at their defaults; a source prints include/exclude; resources print all three.
# Spelling a default out in a document therefore never changes its hash.
OMIT_AT_DEFAULT: dict[type[Any], frozenset[str]] = {
    FunctionEntrypoint: frozenset(
        {"args_schema", "return_schema", "concurrency", "extra_imports", "working_dir"}
    ),
    App: frozenset({"env", "mounts", "network", "threat_tier", "addons"}),
}
