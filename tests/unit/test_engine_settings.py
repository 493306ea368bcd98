"""``Engine.open(home=...)``: an engine's settings are its own (DESIGN §4, issue 13).

Two engines with different homes in one process (one task, even) keep separate
state databases and run directories and never see each other's VMs; a detached VM
started under explicit settings is supervised by a shim that uses the same home,
although the environment names another. Runs on the stub backend (the real guest
agent as a host process), no QEMU.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from mvm import Engine, Image, VmRequest
from mvm.engine.base.paths import mvm_home
from mvm.engine.base.settings import Settings, current_settings, use_settings
from mvm.engine.store import StateStore
from mvm.engine.vm.detached import start_detached, stop_vm_record


@pytest.fixture
def image(tmp_path: Path) -> Image:
    (tmp_path / "vmlinux").write_bytes(b"fake")
    (tmp_path / "rootfs.ext4").write_bytes(b"fake")
    (tmp_path / "mvm-meta.json").write_text(json.dumps({"name": "fake", "sealed": False}))
    return Image.load(tmp_path)


@pytest.fixture
def homes() -> Iterator[tuple[Path, Path]]:
    # short paths under /tmp: Unix socket paths must stay under 108 bytes
    a = Path(tempfile.mkdtemp(prefix="mvma-", dir="/tmp"))
    b = Path(tempfile.mkdtemp(prefix="mvmb-", dir="/tmp"))
    yield a, b
    shutil.rmtree(a, ignore_errors=True)
    shutil.rmtree(b, ignore_errors=True)


def _request(image: Image, name: str, **kw: str) -> VmRequest:
    return VmRequest(name=name, image_dir=str(image.directory), backend="stub", **kw)  # type: ignore[arg-type]


async def test_two_engines_with_their_own_homes_do_not_see_each_other(
    image: Image, homes: tuple[Path, Path]
) -> None:
    home_a, home_b = homes
    async with Engine.open(home=home_a) as a, Engine.open(home=home_b) as b:
        assert a.settings.home == home_a and b.settings.home == home_b
        # the innermost engine's settings are installed for the block ...
        assert current_settings().home == home_b
        # ... yet each engine's methods run under its own
        one = await a.start(_request(image, "one"), image)
        two = await b.start(_request(image, "two"), image)
        twin_a = await a.start(_request(image, "twin"), image)
        twin_b = await b.start(_request(image, "twin"), image)  # same name, other home
        assert sorted(r.name for r in await a.list_vms()) == ["one", "twin"]
        assert sorted(r.name for r in await b.list_vms()) == ["twin", "two"]
        assert one.console_log is not None and one.console_log.startswith(str(home_a))
        assert two.console_log is not None and two.console_log.startswith(str(home_b))
        assert twin_a.pid != twin_b.pid
        assert (home_a / "vms" / "one").is_dir() and not (home_a / "vms" / "two").exists()
        assert (home_b / "vms" / "two").is_dir() and not (home_b / "vms" / "one").exists()
        assert await a.store.get_vm("two") is None and await b.store.get_vm("one") is None
    assert (home_a / "state.db").is_file() and (home_b / "state.db").is_file()
    # the environment's home (the test's MVM_HOME) was never touched
    assert mvm_home() == Path(os.environ["MVM_HOME"])
    assert not (Path(os.environ["MVM_HOME"]) / "state.db").exists()


async def test_engine_open_home_wins_over_the_environment(
    image: Image, homes: tuple[Path, Path]
) -> None:
    home_a, _ = homes
    async with Engine.open(home=home_a, settings=Settings(home="/nonexistent")) as engine:
        assert engine.settings.home == home_a
        assert mvm_home() == home_a
        await engine.start(_request(image, "solo"), image)
        rows = await engine.list_vms()
        assert [r.name for r in rows] == ["solo"]
    async with StateStore.open() as env_store:  # the environment's home
        assert await env_store.list_vms() == []


async def test_a_detached_vm_shim_uses_the_home_of_its_settings(
    image: Image, homes: tuple[Path, Path]
) -> None:
    """The shim is a new process (an edge): the parent passes its settings in the
    child's environment, whatever MVM_HOME the parent's own environment names."""
    home_a, _ = homes
    mine = Settings(home=home_a, cache=current_settings().cache)
    with use_settings(mine):
        info = await start_detached(_request(image, "bg", mode="detached"))
    try:
        with use_settings(mine):
            async with StateStore.open() as store:
                rec = await store.get_vm("bg")
                assert rec is not None and rec.state == "running"
                assert rec.run_dir == str(home_a / "vms" / "bg")
        async with StateStore.open() as env_store:  # the environment's home
            assert await env_store.get_vm("bg") is None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(info["pid"], signal.SIGKILL)
        for home in (home_a, Path(os.environ["MVM_HOME"])):  # stop the VMM wherever it is
            with use_settings(attrs.evolve(mine, home=home)):
                async with StateStore.open() as store:
                    left = await store.get_vm("bg")
                    if left is not None:
                        await stop_vm_record(store, left)
    assert (home_a / "state.db").is_file()
