"""Turn the IMAGE argument of run/up into a built Image.

IMAGE is ``demo`` / ``demo-dev`` (built-in specs), a spec ``.json`` file or a
Workload IR ``.json`` file (told apart by IR's ``schema_version``; both built with
the offline builder, cached), or a directory that already holds
vmlinux + rootfs.ext4 + mvm-meta.json (e.g. a Nix build result).
"""

from __future__ import annotations

from pathlib import Path

from mvm.cli.progress import BuildProgress
from mvm.engine.base.errors import ConfigError
from mvm.engine.build_target import is_workload_ir, spec_of_file
from mvm.engine.builders.offline_image import build_offline_image
from mvm.engine.images.image import Image
from mvm.engine.images.imagespec import ImageSpec
from mvm.engine.ir import ir_hash, validate_text


def workload_ir_hash(ref: str) -> str | None:
    """The IR hash when ``ref`` is a Workload IR file: it is what the launch's plan signs."""
    path = Path(ref)
    if path.suffix != ".json" or not is_workload_ir(path):
        return None
    return ir_hash(validate_text(path.read_bytes(), base_dir=path.resolve().parent))


def builtin_spec(ref: str) -> ImageSpec | None:
    from mvm.backends.demo import DEMO_DEV_SPEC, DEMO_SPEC

    return {"demo": DEMO_SPEC, "demo-dev": DEMO_DEV_SPEC}.get(ref)


async def resolve_image(
    ref: str, *, quiet: bool = False, command: tuple[str, ...] | None = None
) -> Image:
    """``command`` (``run IMAGE -- CMD ARGS``) replaces the spec's entrypoint: the image
    is built from the spec with that command (cached like any build), so only specs
    can take one; a prebuilt image directory cannot."""
    spec = builtin_spec(ref)
    path = Path(ref)
    if command and spec is None and path.is_dir():
        raise ConfigError(
            f"{ref} is a built image: `-- CMD` needs an image built from a spec",
            code="E_RUN_COMMAND",
            hint="give demo, demo-dev or a SPEC.json, or put the command in the spec",
        )
    if spec is None and path.is_dir():
        return Image.load(path)
    if spec is None and path.suffix == ".json":
        spec = await spec_of_file(path)
    if spec is None:
        raise ConfigError(
            f"image {ref!r} is neither a built-in (demo, demo-dev), a spec .json file "
            "nor an image directory",
            code="E_IMAGE_REF",
        )
    if command:
        import attrs

        spec = attrs.evolve(spec, command=command)
    with BuildProgress(enabled=not quiet) as progress:
        return await build_offline_image(spec, progress=progress.update)
