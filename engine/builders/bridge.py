"""Run an asyncio-only coroutine (asyncssh) from any anyio backend.

asyncssh is built on asyncio and cannot run under trio. On asyncio we simply
await it. Under trio the coroutine runs on one shared asyncio loop in a daemon
thread (the one place a thread is forced on us), and cancellation is carried
across: the trio side cancels the asyncio task and then waits, shielded and
bounded, until the task has really finished -- so its ``finally`` blocks (kill the
remote build, delete the remote work dir) complete before the caller's cancellation
propagates. That is what makes Ctrl-C leave no remote process behind.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel

T = TypeVar("T")

CLEANUP_WAIT_S = 30.0

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _asyncio_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=loop.run_forever, name="mvm-asyncio-bridge", daemon=True
            )
            thread.start()
            _loop = loop
        return _loop


async def run_on_asyncio(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """``await make()`` on an asyncio loop, whatever loop the caller runs on."""
    if _on_asyncio():
        return await make()
    loop = _asyncio_loop()
    finished = threading.Event()

    async def wrapped() -> T:
        try:
            return await make()
        finally:
            finished.set()

    future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(wrapped(), loop)
    try:
        return await anyio.to_thread.run_sync(future.result, abandon_on_cancel=True)
    except BaseException:
        if not future.done():
            future.cancel()  # cancels the asyncio task; its finally blocks still run
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(finished.wait, CLEANUP_WAIT_S)
        raise


def caller_callback(fn: Callable[[str], None]) -> Callable[[str], None]:
    """Wrap a callback so the asyncio side can call it: under trio it then runs on the
    caller's own loop (callbacks may touch the caller's state without locks)."""
    if _on_asyncio():
        return fn
    token = anyio.lowlevel.current_token()

    def call(line: str) -> None:
        with contextlib.suppress(RuntimeError):  # the caller's loop is gone: drop the line
            anyio.from_thread.run_sync(fn, line, token=token)

    return call
