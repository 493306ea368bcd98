"""BuilderVM pool: parallel builds in one loop, single flight, cache hits, failures, Ctrl-C.

The builder is the real host-mode builder running a fake ``nix`` (a shell script
that parses the real ``nix build`` command line, logs, sleeps and writes the three
artifacts through the ``--out-link``), so processes, process groups, staging dirs
and promotion are all real.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import anyio.abc
import attrs
import pytest
from fakes.fake_nix import write_fake_nix

from mvm.actors.builder_vm import BuilderPool, builder_pool
from mvm.engine.base.errors import BuildPhaseError
from mvm.engine.builders import BuildJob
from mvm.engine.builders.cache import BuildCache
from mvm.engine.builders.host import HostNixBuilder
from mvm.engine.builders.vsock import VsockBuilder, VsockTarget, serve_builder
from mvm.engine.store import StateStore


def make_flake(root: Path, name: str, body: str = "") -> Path:
    flake = root / name
    flake.mkdir(parents=True)
    (flake / "flake.nix").write_text(f"{{ outputs = _: {{ }}; }} # {name} {body}\n")
    return flake


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FAKE_NIX_LOG", str(tmp_path / "nix.log"))
    monkeypatch.setenv("FAKE_NIX_SLEEP", "0.4")
    (tmp_path / "pids").mkdir()
    monkeypatch.setenv("FAKE_NIX_PIDS", str(tmp_path / "pids"))
    monkeypatch.setenv("FAKE_NIX_STORE", str(tmp_path / "store"))
    return tmp_path


def nix_runs(tmp: Path) -> list[str]:
    log = tmp / "nix.log"
    return log.read_text().splitlines() if log.exists() else []


async def test_eight_parallel_builds_share_one_loop_with_single_flight(env: Path) -> None:
    flakes = [make_flake(env / "src", f"f{i}") for i in range(4)]
    cache = BuildCache(env / "cache")
    builder = HostNixBuilder(str(write_fake_nix(env)))
    jobs = [BuildJob(name=f"j{i}", source=flakes[i % 4], attr="default") for i in range(8)]
    outcomes = []
    async with builder_pool(builder, size=8, cache=cache) as pool:
        started = time.monotonic()

        async def one(job: BuildJob) -> None:
            outcomes.append(await pool.build(job))

        async with anyio.create_task_group() as tg:
            for job in jobs:
                tg.start_soon(one, job)
        first_round = time.monotonic() - started
        # Same inputs again: all eight are cache hits, no nix process at all.
        again = [await pool.build(job) for job in jobs]
        stats = attrs.evolve(pool.stats)

    assert len(nix_runs(env)) == 4  # one nix build per distinct flake
    assert sum(not o.cache_hit for o in outcomes) == 4
    assert sum(o.shared for o in outcomes) == 4
    assert all(o.cache_hit and not o.shared for o in again)
    assert (stats.misses, stats.shared, stats.hits, stats.failures) == (4, 4, 8, 0)
    assert stats.peak_running == 4
    # Four 0.4 s builds ran concurrently, not one after another.
    assert first_round < 1.2, first_round
    keys = {o.key for o in outcomes}
    assert len(keys) == 4
    for o in outcomes:
        assert o.image.directory == cache.path(o.key)
        assert (o.image.directory / "mvm-build.json").is_file()
        assert not (o.image.directory / "result").exists()  # no GC root left in the cache
    assert cache.staging_dirs() == []


async def test_changed_source_misses_and_unchanged_hits(env: Path) -> None:
    flake = make_flake(env / "src", "app")
    cache = BuildCache(env / "cache")
    async with builder_pool(HostNixBuilder(str(write_fake_nix(env))), cache=cache) as pool:
        first = await pool.build(BuildJob(name="a", source=flake))
        second = await pool.build(BuildJob(name="a", source=flake))
        (flake / "flake.nix").write_text("{ outputs = _: { x = 1; }; }\n")
        third = await pool.build(BuildJob(name="a", source=flake))
        other_attr = await pool.build(BuildJob(name="a", source=flake, attr="dev"))
    assert not first.cache_hit and second.cache_hit and second.key == first.key
    assert not third.cache_hit and third.key != first.key
    assert not other_attr.cache_hit and other_attr.key != third.key
    assert third.image.rootfs.read_text() == "{ outputs = _: { x = 1; }; }\n"
    assert len(nix_runs(env)) == 3


async def test_nix_failure_is_phase_named_and_leaves_nothing(env: Path) -> None:
    flake = make_flake(env / "src", "broken")
    (flake / "fail").write_text("")
    cache = BuildCache(env / "cache")
    logs: list[str] = []
    async with builder_pool(HostNixBuilder(str(write_fake_nix(env))), cache=cache) as pool:
        with pytest.raises(BuildPhaseError) as info:
            await pool.build(BuildJob(name="b", source=flake), on_log=logs.append)
        assert pool.stats.failures == 1
    assert info.value.code == "E_BUILD_NIX_FAILED"
    assert info.value.phase == "build"
    assert "builder for '/nix/store/fake-default.drv' failed" in info.value.message
    assert any(line.startswith("building '/nix/store/fake-default.drv'") for line in logs)
    assert cache.staging_dirs() == []
    assert [p.name for p in (env / "cache").iterdir()] == []


async def test_missing_nix_binary_is_coded(env: Path) -> None:
    flake = make_flake(env / "src", "x")
    async with builder_pool(
        HostNixBuilder(str(env / "no-such-nix")), cache=BuildCache(env / "cache")
    ) as pool:
        with pytest.raises(BuildPhaseError) as info:
            await pool.build(BuildJob(name="x", source=flake))
    assert info.value.code == "E_NIX_MISSING"


async def test_cancellation_leaves_no_staging_dir_and_no_process(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_NIX_SLEEP", "30")
    flakes = [make_flake(env / "src", f"slow{i}") for i in range(3)]
    cache = BuildCache(env / "cache")
    with anyio.move_on_after(1.0) as scope:  # what Ctrl-C does to the command's scope
        async with (
            builder_pool(HostNixBuilder(str(write_fake_nix(env))), cache=cache) as pool,
            anyio.create_task_group() as tg,
        ):
            for flake in flakes:
                tg.start_soon(pool.build, BuildJob(name=flake.name, source=flake))
    assert scope.cancelled_caught
    pids = [int(p.name) for p in (env / "pids").iterdir()]
    assert len(pids) == 3
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"nix {pid} survived"
    assert cache.staging_dirs() == []
    assert list(cache.root.iterdir()) == []


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


async def test_builds_are_recorded_in_the_state_store(env: Path) -> None:
    flake = make_flake(env / "src", "rec")
    async with StateStore.open(env / "state.db") as store:
        cache = BuildCache(env / "cache", store=store)
        async with builder_pool(HostNixBuilder(str(write_fake_nix(env))), cache=cache) as pool:
            outcome = await pool.build(BuildJob(name="rec", source=flake))
        record = await store.get_build(outcome.key)
    assert record is not None
    assert record.status == "ready"
    assert record.path == str(cache.path(outcome.key))


async def test_pool_size_must_be_positive() -> None:
    from mvm.engine.base.errors import ConfigError

    with pytest.raises(ConfigError):
        BuilderPool(HostNixBuilder(), size=0)
    assert os.cpu_count()


# -- vsock mode over a Unix-socket stand-in (no /dev/vhost-vsock on this host) ----------------


async def _serve_unix(path: Path, nix: Path, *, task_status: anyio.abc.TaskStatus[None]) -> None:
    listener = await anyio.create_unix_listener(path)

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await serve_builder(stream, nix=str(nix))

    task_status.started()
    await listener.serve(handle)


async def test_vsock_protocol_builds_and_streams_logs(env: Path) -> None:
    flake = make_flake(env / "src", "vs")
    sock = env / "builder.sock"
    cache = BuildCache(env / "cache")
    logs: list[str] = []
    async with anyio.create_task_group() as tg:
        await tg.start(_serve_unix, sock, write_fake_nix(env))
        builder = VsockBuilder(VsockTarget.parse(f"unix:{sock}"))
        async with builder_pool(builder, cache=cache) as pool:
            outcome = await pool.build(BuildJob(name="vs", source=flake), on_log=logs.append)
            again = await pool.build(BuildJob(name="vs", source=flake))
        tg.cancel_scope.cancel()
    assert outcome.mode == "vsock" and not outcome.cache_hit and again.cache_hit
    assert outcome.image.rootfs.read_text() == (flake / "flake.nix").read_text()
    assert "building '/nix/store/fake-default.drv'..." in logs
    assert len(nix_runs(env)) == 1


async def test_vsock_nix_failure_and_hangup_cancels_the_remote_build(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = make_flake(env / "src", "broken")
    (broken / "fail").write_text("")
    sock = env / "builder.sock"
    cache = BuildCache(env / "cache")
    async with anyio.create_task_group() as tg:
        await tg.start(_serve_unix, sock, write_fake_nix(env))
        builder = VsockBuilder(VsockTarget.parse(f"unix:{sock}"))
        async with builder_pool(builder, cache=cache) as pool:
            with pytest.raises(BuildPhaseError) as info:
                await pool.build(BuildJob(name="b", source=broken))
        assert (info.value.code, info.value.phase) == ("E_BUILD_NIX_FAILED", "build")

        monkeypatch.setenv("FAKE_NIX_SLEEP", "30")
        slow = make_flake(env / "src", "slow")
        with anyio.CancelScope() as scope:
            async with builder_pool(builder, cache=cache) as pool, anyio.create_task_group() as g:
                g.start_soon(pool.build, BuildJob(name="slow", source=slow))
                while len(list((env / "pids").iterdir())) < 2:
                    await anyio.sleep(0.02)
                scope.cancel()
        with anyio.fail_after(5):  # the server sees the hang-up and kills nix
            pid = max(int(p.name) for p in (env / "pids").iterdir())
            while Path(f"/proc/{pid}").exists() and not _zombie(pid):
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
    assert cache.staging_dirs() == []
    assert not list(Path("/tmp").glob("mvm-vsock-build.*"))


async def test_vsock_without_transport_is_unavailable(env: Path) -> None:
    builder = VsockBuilder(VsockTarget.parse(f"unix:{env}/absent.sock"))
    async with builder_pool(builder, cache=BuildCache(env / "cache")) as pool:
        with pytest.raises(BuildPhaseError) as info:
            await pool.build(BuildJob(name="x", source=make_flake(env / "src", "x")))
    assert (info.value.code, info.value.phase) == ("E_BUILD_VSOCK_UNAVAILABLE", "connect")
