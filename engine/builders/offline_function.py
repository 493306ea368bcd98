"""Offline build of a flake whose image is ``mkFunctionWorkload { irFile; appPkg; }``.

A host without nixpkgs cannot realise the Nix rootfs, but mkFunctionWorkload's
inputs are plain files: its output carries ``mvmFunctionWorkload = {irFile, appPkg,
dev}`` (nix/lib/mkFunctionWorkload.nix, evaluated after the seed's validation
throws), and the IR image mapper (engine/images/ir_image.py) lays out the same files
(entrypoint, runner, wrapper.json, runtime.json, app at working_dir) with the
host's python instead of ``pkgs.python3``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio

from mvm.engine.base.errors import ConfigError
from mvm.engine.images.imagespec import ImageSpec

KEY = "mvmFunctionWorkload"


async def function_workload_spec(info: dict[str, Any]) -> ImageSpec:
    """The ImageSpec for ``passthru.mvmFunctionWorkload`` (irFile, appPkg, dev)."""
    from mvm.engine.images.ir_image import workload_image_spec
    from mvm.engine.ir import validate_text

    ir_file = Path(str(info.get("irFile", "")))
    app_root = Path(str(info.get("appPkg", "")))
    dev = bool(info.get("dev", False))
    try:
        text = ir_file.read_bytes()
    except OSError:
        raise ConfigError(
            f"mkFunctionWorkload: irFile {ir_file} cannot be read", code="E_IR_MISSING"
        ) from None
    base = ir_file.parent
    workload = validate_text(text, base_dir=base)
    spec: ImageSpec = await anyio.to_thread.run_sync(
        lambda: workload_image_spec(workload, base_dir=base, dev=dev, app_root=app_root)
    )
    return spec
