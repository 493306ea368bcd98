"""Kernel build: cache key, config verification, source/override errors, and the full
build pipeline (extract, configure, verify, compile, promote, lock, cancel) run
against a tiny fake kernel tree whose Makefile mimics the real targets."""

from __future__ import annotations

import fcntl
import functools
import io
import os
import tarfile
import time
from pathlib import Path

import pytest
import trio

from mvm.backends import kernel_build as kb
from mvm.engine.base.errors import BuildError, ConfigError
from mvm.engine.base.paths import cache_dir

SHARED_CACHE = cache_dir()  # before the fixtures point MVM_CACHE at a temp dir

FAKE_MAKEFILE = """\
.PHONY: tinyconfig olddefconfig vmlinux
tinyconfig:
\t@printf 'CONFIG_64BIT=y\\n# CONFIG_EXT4_FS is not set\\n' > .config
olddefconfig:
\t@echo '  HOSTCC  scripts/kconfig/conf.o'
vmlinux:
\t@echo '  CC      init/main.o'
\t@echo '  CC      kernel/fork.o'
\t@if [ -n "$$FAKE_COUNTER" ]; then echo built >> "$$FAKE_COUNTER"; fi
\t@sh -c '[ -z "$$FAKE_PIDFILE" ] || echo $$$$ > "$$FAKE_PIDFILE"; exec sleep $${FAKE_SLEEP:-0}'
\t@if [ -n "$$FAKE_FAIL" ]; then echo "error: $$FAKE_FAIL" >&2; exit 2; fi
\t@printf 'fake-vmlinux' > vmlinux
"""
FAKE_MERGE = """\
#!/bin/bash
# merge_config.sh -m .config FRAGMENT; FAKE_DROP names an option Kconfig "rejects".
if [ -n "$FAKE_DROP" ]; then grep -v "^$FAKE_DROP=" "$3" >> "$2"; else cat "$3" >> "$2"; fi
"""
FRAGMENT = "# test fragment\nCONFIG_64BIT=y\nCONFIG_EXT4_FS=y\nCONFIG_IPV6=n\n"


def _add(tar: tarfile.TarFile, name: str, text: str, mode: int = 0o644) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MVM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MVM_KERNEL", raising=False)
    for var in ("FAKE_COUNTER", "FAKE_PIDFILE", "FAKE_SLEEP", "FAKE_FAIL", "FAKE_DROP"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def fake_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> kb.KernelSource:
    fragment = tmp_path / "microvm.config"
    fragment.write_text(FRAGMENT)
    monkeypatch.setattr(kb, "FRAGMENT", fragment)
    tarball = tmp_path / "linux-source-fake.tar.xz"
    with tarfile.open(tarball, "w:xz") as tar:
        _add(tar, "linux-source-fake/Makefile", FAKE_MAKEFILE)
        _add(tar, "linux-source-fake/scripts/kconfig/merge_config.sh", FAKE_MERGE, 0o755)
    return kb.KernelSource(version="6.1.999-test", tarball=tarball)


def _kernel_dir() -> Path:
    return Path(os.environ["MVM_CACHE"]) / "kernel"


# ---------------------------------------------------------------- cache key


def test_cache_key_is_stable_and_sensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    base = kb.kernel_cache_key(version="6.1.1-1", fragment=b"CONFIG_A=y\n")
    assert base == kb.kernel_cache_key(version="6.1.1-1", fragment=b"CONFIG_A=y\n")
    assert len(base) == 64 and int(base, 16) >= 0
    assert base != kb.kernel_cache_key(version="6.1.1-2", fragment=b"CONFIG_A=y\n")
    assert base != kb.kernel_cache_key(version="6.1.1-1", fragment=b"CONFIG_A=y\n\n")
    # field boundaries are length-prefixed: moving bytes between fields changes the key
    assert kb.kernel_cache_key(version="a", fragment=b"bc") != kb.kernel_cache_key(
        version="ab", fragment=b"c"
    )
    monkeypatch.setattr(kb, "RECIPE_VERSION", kb.RECIPE_VERSION + "-next")
    assert base != kb.kernel_cache_key(version="6.1.1-1", fragment=b"CONFIG_A=y\n")


def test_default_key_uses_installed_source_and_shipped_fragment() -> None:
    try:
        source = kb.find_source()
    except BuildError:
        pytest.skip("linux-source-6.1 not installed")
    assert kb.kernel_cache_key() == kb.kernel_cache_key(
        version=source.version, fragment=kb.FRAGMENT.read_bytes()
    )


# ---------------------------------------------------------------- config verification


def test_missing_options_reports_dropped_y_options_only() -> None:
    fragment = "CONFIG_A=y\nCONFIG_B=y\nCONFIG_C=n\n# CONFIG_D=y\nCONFIG_E=64\n"
    config = "CONFIG_A=y\n# CONFIG_B is not set\n# CONFIG_C is not set\nCONFIG_E=64\n"
    assert kb.required_options(fragment) == ["CONFIG_A", "CONFIG_B"]
    assert kb.missing_options(fragment, config) == ["CONFIG_B"]
    assert kb.missing_options(fragment, config + "CONFIG_B=m\n") == ["CONFIG_B"]
    assert kb.missing_options(fragment, config + "CONFIG_B=y\n") == []


def test_verify_config_names_missing_options(tmp_path: Path) -> None:
    fragment = tmp_path / "frag.config"
    fragment.write_text("CONFIG_VIRTIO_BLK=y\nCONFIG_EXT4_FS=y\nCONFIG_PVH=y\n")
    config = tmp_path / ".config"
    config.write_text("CONFIG_VIRTIO_BLK=y\n# CONFIG_PVH is not set\n")
    with pytest.raises(BuildError) as err:
        kb.verify_config(fragment, config)
    assert err.value.code == "E_KERNEL_CONFIG"
    assert "CONFIG_EXT4_FS" in err.value.message and "CONFIG_PVH" in err.value.message
    assert "CONFIG_VIRTIO_BLK" not in err.value.message


def test_shipped_fragment_survives_olddefconfig() -> None:
    """Regression guard for the fragment itself, against a real merged .config."""
    configs = sorted(SHARED_CACHE.glob("kernel/*/config"))
    if not configs:
        pytest.skip("no cached kernel build to check the fragment against")
    kb.verify_config(kb.FRAGMENT, configs[-1])


# ---------------------------------------------------------------- source / override


def test_missing_package_is_a_setup_error() -> None:
    with pytest.raises(BuildError) as err:
        kb.find_source(package="linux-source-does-not-exist")
    assert err.value.code == "E_KERNEL_SOURCE"
    assert err.value.hint is not None and "./scripts/setup" in err.value.hint
    assert "linux-source-6.1" in err.value.one_line()


async def test_missing_tarball_is_a_setup_error(tmp_path: Path) -> None:
    source = kb.KernelSource(version="6.1.1-1", tarball=tmp_path / "gone.tar.xz")
    with pytest.raises(BuildError) as err:
        await kb.ensure_kernel(source=source)
    assert err.value.code == "E_KERNEL_SOURCE"
    assert not _kernel_dir().exists()


async def test_mvm_kernel_overrides_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = tmp_path / "my-vmlinux"
    mine.write_bytes(b"kernel")
    monkeypatch.setenv("MVM_KERNEL", str(mine))
    # a source that cannot build proves the override short-circuits everything
    source = kb.KernelSource(version="x", tarball=tmp_path / "absent.tar.xz")
    assert await kb.ensure_kernel(source=source) == mine.resolve()
    assert not _kernel_dir().exists()


async def test_mvm_kernel_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MVM_KERNEL", str(tmp_path / "nope"))
    with pytest.raises(ConfigError) as err:
        await kb.ensure_kernel()
    assert err.value.code == "E_KERNEL_MISSING"


# ---------------------------------------------------------------- the build pipeline


async def test_build_promotes_vmlinux_and_config_then_reuses_it(
    fake_source: kb.KernelSource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = tmp_path / "builds"
    monkeypatch.setenv("FAKE_COUNTER", str(counter))
    events: list[tuple[str, float | None]] = []
    path = await kb.ensure_kernel(lambda p, f: events.append((p, f)), source=fake_source, jobs=1)

    key = kb.kernel_cache_key(version=fake_source.version)
    assert path == _kernel_dir() / key / "vmlinux"
    assert path.read_bytes() == b"fake-vmlinux"
    merged = (path.parent / "config").read_text()
    assert "CONFIG_EXT4_FS=y" in merged
    # only the artifacts survive: no extracted tree, no work dir, no log
    assert sorted(p.name for p in path.parent.iterdir()) == ["config", "vmlinux"]
    assert sorted(p.name for p in _kernel_dir().iterdir()) == [key, f"{key}.lock"]

    phases = [p for p, _ in events]
    assert phases[0].startswith("kernel: extracting") and "6.1.999-test" in phases[0]
    assert "kernel: configuring" in phases
    compile_fracs = [f for p, f in events if p == "kernel: compiling" and f is not None]
    assert compile_fracs[0] == 0.0 and len(compile_fracs) >= 3
    assert compile_fracs == sorted(compile_fracs) and max(compile_fracs) < 1.0
    assert events[-1] == ("kernel: done", 1.0)

    again = await kb.ensure_kernel(source=fake_source)
    assert again == path
    assert counter.read_text().count("built") == 1


async def test_dropped_option_fails_with_e_kernel_config(
    fake_source: kb.KernelSource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_DROP", "CONFIG_EXT4_FS")
    counter = tmp_path / "builds"
    monkeypatch.setenv("FAKE_COUNTER", str(counter))
    with pytest.raises(BuildError) as err:
        await kb.ensure_kernel(source=fake_source)
    assert err.value.code == "E_KERNEL_CONFIG"
    assert "CONFIG_EXT4_FS" in err.value.message
    assert not counter.exists()  # never reached `make vmlinux`
    assert not list(_kernel_dir().glob(".build-*"))


async def test_compile_failure_quotes_the_error_and_keeps_the_log(
    fake_source: kb.KernelSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FAIL", "undefined reference to boom")
    with pytest.raises(BuildError) as err:
        await kb.ensure_kernel(source=fake_source)
    assert err.value.code == "E_KERNEL_BUILD"
    assert "boom" in err.value.message
    key = kb.kernel_cache_key(version=fake_source.version)
    log_path = _kernel_dir() / f"{key}.build.log"
    assert err.value.hint is not None and str(log_path) in err.value.hint
    assert "CC      init/main.o" in log_path.read_text()
    assert not (_kernel_dir() / key).exists()
    assert not list(_kernel_dir().glob(".build-*"))


async def test_concurrent_callers_build_once(
    fake_source: kb.KernelSource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = tmp_path / "builds"
    monkeypatch.setenv("FAKE_COUNTER", str(counter))
    monkeypatch.setenv("FAKE_SLEEP", "0.5")
    results: list[Path] = []

    async def one() -> None:
        results.append(await kb.ensure_kernel(source=fake_source))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(one)
    assert len(results) == 3 and len(set(results)) == 1
    assert counter.read_text().count("built") == 1


async def test_cancelled_build_leaves_nothing_and_kills_make(
    fake_source: kb.KernelSource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pidfile = tmp_path / "sleep.pid"
    monkeypatch.setenv("FAKE_PIDFILE", str(pidfile))
    monkeypatch.setenv("FAKE_SLEEP", "60")
    with trio.move_on_after(10) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(kb.ensure_kernel, source=fake_source))
            while not pidfile.exists() or not pidfile.read_text().strip():
                await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
    assert not scope.cancelled_caught, "the build did not start in time"
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        await trio.sleep(0.05)
    assert not _alive(pid), "the compiler process group survived cancellation"
    key = kb.kernel_cache_key(version=fake_source.version)
    assert sorted(p.name for p in _kernel_dir().iterdir()) == [f"{key}.lock"]


async def test_stale_work_dir_from_a_killed_build_is_removed(
    fake_source: kb.KernelSource,
) -> None:
    key = kb.kernel_cache_key(version=fake_source.version)
    stale = _kernel_dir() / f".build-{key}-deadbeef"
    (stale / "linux").mkdir(parents=True)
    await kb.ensure_kernel(source=fake_source)
    assert not stale.exists()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


async def test_waiting_for_the_lock_is_cancellable_and_releases_it(
    fake_source: kb.KernelSource,
) -> None:
    """Another process holds the build lock: we wait (in a thread), can be cancelled
    while waiting, and the abandoned waiter never keeps the lock afterwards."""
    key = kb.kernel_cache_key(version=fake_source.version)
    _kernel_dir().mkdir(parents=True)
    holder = os.open(_kernel_dir() / f"{key}.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    phases: list[str] = []
    started = time.monotonic()
    with trio.move_on_after(0.3):
        await kb.ensure_kernel(lambda p, f: phases.append(p), source=fake_source)
    assert time.monotonic() - started < 2
    assert phases == ["kernel: waiting for another build"]
    os.close(holder)  # the other "process" finishes without producing a kernel
    probe = os.open(_kernel_dir() / f"{key}.lock", os.O_RDWR)
    try:
        deadline = time.monotonic() + 3
        while True:
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, "abandoned waiter kept the lock"
                await trio.sleep(0.02)
    finally:
        os.close(probe)
    assert not (_kernel_dir() / key).exists()
