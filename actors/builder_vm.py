"""BuilderVM actors and their pool: parallel, cache-keyed image builds in one event loop.

The pool is the only door: it computes each job's cache key, answers cache hits
itself, coalesces jobs whose key is already being built (single flight: eight
requests for one flake run one ``nix build`` and seven wait for it) and queues
the rest for its BuilderVM workers. A BuilderVM is one build slot -- a local Nix
process, a remote builder reached over SSH or a builder VM over vsock -- and
runs one job at a time, so the pool size is the build parallelism.

Everything lives in the pool's supervisor task group: cancelling the pool (Ctrl-C)
cancels the running builds, whose staging dirs the cache deletes (shielded) and
whose processes the builders kill, local or remote.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from mvm.engine.base.errors import BuildError, ConfigError, MvmError
from mvm.engine.base.log import get_logger
from mvm.engine.builders import Builder, BuildJob, LogFn
from mvm.engine.builders.cache import BuildCache, CacheKey, job_key
from mvm.engine.images.image import Image
from mvm.engine.runtime.actor import Actor, Reply, ask
from mvm.engine.runtime.supervisor import RestartPolicy, Supervisor

log = get_logger("mvm.builder")

DEFAULT_BUILD_TIMEOUT_S = 3600.0


@attrs.frozen
class BuildOutcome:
    key: str
    image: Image
    cache_hit: bool
    mode: str
    seconds: float
    shared: bool = False  # True: waited for an identical build another request started


@attrs.frozen(eq=False)
class BuildRequest:
    job: BuildJob
    reply: Reply[BuildOutcome]
    on_log: LogFn | None = None


@attrs.frozen(eq=False)
class _Work:
    key: CacheKey
    job: BuildJob
    on_log: LogFn | None


@attrs.define
class PoolStats:
    hits: int = 0
    misses: int = 0
    shared: int = 0
    failures: int = 0
    running: int = 0
    peak_running: int = 0  # most builds that ran at the same time


def family_of(builder: Builder) -> str:
    """Every Nix mode builds the same derivation, so they share cache entries."""
    return "offline" if builder.mode == "offline" else "nix"


class BuilderVM(Actor[_Work]):
    """One build slot. Its inbox is a clone of the pool's shared work queue, so an
    idle slot takes the next job; a slot that crashes (a bug, not a failed build)
    is restarted by the pool's supervisor and keeps its queue."""

    def __init__(self, name: str, pool: BuilderPool, work: MemoryObjectReceiveStream[_Work]):
        super().__init__(name)
        self._pool = pool
        self._work = work

    async def run(
        self, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        async for work in self._work:
            await self._build(work)

    async def _build(self, work: _Work) -> None:
        pool = self._pool
        started = time.monotonic()
        mode = pool.builder.mode
        pool.stats.running += 1
        pool.stats.peak_running = max(pool.stats.peak_running, pool.stats.running)
        log.info("build.start", slot=self.name, job=work.job.label, key=work.key.key, mode=mode)
        try:
            async with pool.cache.staging(work.key, mode=mode) as out:
                await pool.builder.build(work.job, out, work.on_log or _quiet)
            image = pool.cache.lookup(work.key.key)
            if image is None:
                raise MvmError(f"build {work.key.key} vanished from the cache", code="E_BUILD")
        except MvmError as exc:
            pool.stats.failures += 1
            log.info("build.failed", slot=self.name, key=work.key.key, code=exc.code)
            pool.finish(work.key.key, exc)
            return
        except Exception as exc:
            # A bug, not a failed build: answer the waiters, then let the slot restart.
            pool.stats.failures += 1
            pool.finish(work.key.key, BuildError(f"builder crashed: {exc!r}", code="E_BUILD"))
            raise
        finally:
            pool.stats.running -= 1
        seconds = time.monotonic() - started
        log.info("build.done", slot=self.name, key=work.key.key, seconds=round(seconds, 3))
        pool.finish(work.key.key, BuildOutcome(work.key.key, image, False, mode, seconds))


def _quiet(_line: str) -> None:
    return None


class BuilderPool(Actor[BuildRequest]):
    def __init__(
        self,
        builder: Builder,
        *,
        size: int = 4,
        cache: BuildCache | None = None,
        name: str = "builder-pool",
    ) -> None:
        if size < 1:
            raise ConfigError(f"builder pool size must be >= 1, not {size}", code="E_BUILD_POOL")
        super().__init__(name, inbox_size=0)
        self.builder = builder
        self.size = size
        self.cache = cache or BuildCache()
        self.stats = PoolStats()
        self._inflight: dict[str, list[Reply[BuildOutcome]]] = {}
        self._queue: MemoryObjectSendStream[_Work] | None = None

    async def run(
        self, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        send, recv = anyio.create_memory_object_stream[_Work](math.inf)
        self._queue = send
        with send, recv:
            async with Supervisor(self.name) as slots:
                for i in range(self.size):
                    slot = BuilderVM(f"{self.name}-{i}", self, recv.clone())
                    await slots.start(slot, policy=RestartPolicy("on-failure", max_restarts=3))
                task_status.started()
                async for request in self.inbox:
                    await self._dispatch(request)

    async def teardown(self) -> None:
        for waiters in self._inflight.values():
            for reply in waiters:
                reply.fail(MvmError("the builder pool stopped", code="E_ACTOR_STOPPED"))
        self._inflight.clear()

    async def _dispatch(self, request: BuildRequest) -> None:
        try:
            key = await anyio.to_thread.run_sync(job_key, request.job, family_of(self.builder))
        except MvmError as exc:
            request.reply.fail(exc)
            return
        hit = self.cache.lookup(key.key)
        if hit is not None:
            self.stats.hits += 1
            log.info("build.cache_hit", job=request.job.label, key=key.key)
            request.reply.send(BuildOutcome(key.key, hit, True, self.builder.mode, 0.0))
            return
        waiters = self._inflight.get(key.key)
        if waiters is not None:
            self.stats.shared += 1
            waiters.append(request.reply)
            return
        self.stats.misses += 1
        self._inflight[key.key] = [request.reply]
        assert self._queue is not None
        self._queue.send_nowait(_Work(key, request.job, request.on_log))

    def finish(self, key: str, outcome: BuildOutcome | MvmError) -> None:
        """Answer everyone waiting for ``key``: the first request built it, the rest
        shared it (a cache hit for them)."""
        for i, reply in enumerate(self._inflight.pop(key, [])):
            if isinstance(outcome, MvmError):
                reply.fail(outcome)
            elif i == 0:
                reply.send(outcome)
            else:
                reply.send(attrs.evolve(outcome, cache_hit=True, shared=True))

    async def build(
        self,
        job: BuildJob,
        *,
        on_log: LogFn | None = None,
        timeout: float = DEFAULT_BUILD_TIMEOUT_S,
    ) -> BuildOutcome:
        """Build ``job`` (or reuse the cached result) and return where the image is."""
        return await ask(self, lambda reply: BuildRequest(job, reply, on_log), timeout=timeout)


@asynccontextmanager
async def builder_pool(
    builder: Builder, *, size: int = 4, cache: BuildCache | None = None
) -> AsyncIterator[BuilderPool]:
    """A running pool for the duration of the block; leaving it (or cancelling it)
    stops every build and cleans up after it."""
    pool = BuilderPool(builder, size=size, cache=cache)
    async with Supervisor("builder") as sup:
        await sup.start(pool, policy=RestartPolicy("never"))
        yield pool
