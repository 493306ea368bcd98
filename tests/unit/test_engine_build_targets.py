"""`Engine.build` takes what `mvmctl build` takes (issue 16): an ImageSpec, a spec .json
path, a Workload IR .json path, a built image dir, a project dir. The offline builder
itself (kernel, ext4) is replaced by a recorder: what is checked here is which spec each
target resolves to; test_image_builder.py builds real images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mvm import Engine, Image, ImageSpec, MvmError
from mvm.engine.builders import offline_image

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture
def built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[ImageSpec]:
    """Every spec handed to the offline builder; each "build" returns a fake image."""
    specs: list[ImageSpec] = []
    out = tmp_path / "image"
    out.mkdir()
    for name in ("vmlinux", "rootfs.ext4"):
        (out / name).write_bytes(b"fake")
    (out / "mvm-meta.json").write_text(json.dumps({"name": "recorded", "sealed": False}))

    async def record(spec: ImageSpec, progress: object = None) -> Image:
        specs.append(spec)
        return Image.load(out)

    monkeypatch.setattr(offline_image, "build_offline_image", record)
    return specs


async def test_build_a_spec_file_and_an_ir_file(tmp_path: Path, built: list[ImageSpec]) -> None:
    spec_file = tmp_path / "web.json"
    spec_file.write_text(json.dumps({"name": "web", "packages": ["busybox"]}))
    ir_dir = tmp_path / "ir"
    ir_dir.mkdir()
    shutil.copy(FIXTURES / "ir" / "hello.json", ir_dir / "hello.json")
    shutil.copytree(FIXTURES / "hello" / "src", ir_dir / "src")
    async with Engine.open() as engine:
        from_spec = await engine.build(spec_file)
        from_ir = await engine.build(str(ir_dir / "hello.json"))
        from_obj = await engine.build(ImageSpec(name="obj"))
        again = await engine.build(from_spec.directory)  # a built image dir: loaded as is
    assert [s.name for s in built] == ["web", "hello", "obj"]
    assert built[0].packages == ("busybox",)
    assert from_spec.name == from_ir.name == from_obj.name == again.name == "recorded"


async def test_build_refuses_what_it_cannot_build(tmp_path: Path, built: list[ImageSpec]) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    async with Engine.open() as engine:
        with pytest.raises(MvmError) as exc:
            await engine.build(tmp_path / "notes.txt")
        with pytest.raises(MvmError) as missing:
            await engine.build(tmp_path / "absent.json")
    assert exc.value.code == "E_IMAGE_REF"
    assert missing.value.code == "E_SPEC_MISSING"
    assert built == []
