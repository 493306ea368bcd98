"""Workload IR (schema 0.1): model, strict parsing, validation, canonical form and hash.

The submodules are imported on first use of a name (PEP 562): the SDK imports only
``model`` (an entry file's ``import mvm`` stays cheap), and the canonical form's
cattrs converter and the validator load when something canonicalises or validates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mvm.engine.base.errors import IrError
from mvm.engine.base.lazy import lazy_exports

if TYPE_CHECKING:
    from mvm.engine.ir.canonical import canonical_ir, canonical_json, ir_hash, workload_to_dict
    from mvm.engine.ir.model import (
        SCHEMA_VERSION,
        App,
        CommandEntrypoint,
        Dependencies,
        Entrypoint,
        FunctionEntrypoint,
        Image,
        LocalPath,
        Mount,
        Network,
        NixDerivation,
        NixPackages,
        NodeDeps,
        NoDeps,
        OciBase,
        OciImage,
        PythonDeps,
        Resources,
        Source,
        Volume,
        Workload,
    )
    from mvm.engine.ir.validation import (
        check_workload,
        loads,
        parse_workload,
        supported_languages,
        validate,
        validate_text,
    )

_LAZY = {
    "canonical_ir": "mvm.engine.ir.canonical",
    "canonical_json": "mvm.engine.ir.canonical",
    "ir_hash": "mvm.engine.ir.canonical",
    "workload_to_dict": "mvm.engine.ir.canonical",
    "SCHEMA_VERSION": "mvm.engine.ir.model",
    "App": "mvm.engine.ir.model",
    "CommandEntrypoint": "mvm.engine.ir.model",
    "Dependencies": "mvm.engine.ir.model",
    "Entrypoint": "mvm.engine.ir.model",
    "FunctionEntrypoint": "mvm.engine.ir.model",
    "Image": "mvm.engine.ir.model",
    "LocalPath": "mvm.engine.ir.model",
    "Mount": "mvm.engine.ir.model",
    "Network": "mvm.engine.ir.model",
    "NixDerivation": "mvm.engine.ir.model",
    "NixPackages": "mvm.engine.ir.model",
    "NodeDeps": "mvm.engine.ir.model",
    "NoDeps": "mvm.engine.ir.model",
    "OciBase": "mvm.engine.ir.model",
    "OciImage": "mvm.engine.ir.model",
    "PythonDeps": "mvm.engine.ir.model",
    "Resources": "mvm.engine.ir.model",
    "Source": "mvm.engine.ir.model",
    "Volume": "mvm.engine.ir.model",
    "Workload": "mvm.engine.ir.model",
    "check_workload": "mvm.engine.ir.validation",
    "loads": "mvm.engine.ir.validation",
    "parse_workload": "mvm.engine.ir.validation",
    "supported_languages": "mvm.engine.ir.validation",
    "validate": "mvm.engine.ir.validation",
    "validate_text": "mvm.engine.ir.validation",
}


__getattr__ = lazy_exports(__name__, _LAZY, globals())

__all__ = [
    "SCHEMA_VERSION",
    "App",
    "CommandEntrypoint",
    "Dependencies",
    "Entrypoint",
    "FunctionEntrypoint",
    "Image",
    "IrError",
    "LocalPath",
    "Mount",
    "Network",
    "NixDerivation",
    "NixPackages",
    "NoDeps",
    "NodeDeps",
    "OciBase",
    "OciImage",
    "PythonDeps",
    "Resources",
    "Source",
    "Volume",
    "Workload",
    "canonical_ir",
    "canonical_json",
    "check_workload",
    "ir_hash",
    "loads",
    "parse_workload",
    "supported_languages",
    "validate",
    "validate_text",
    "workload_to_dict",
]
