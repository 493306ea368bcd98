"""JSON over HTTP on a Unix socket: the client of Firecracker's and Cloud Hypervisor's APIs.

The connection, the request and the two ways it fails (the socket does not answer:
the VMM is gone or never started; the VMM answers 4xx/5xx) are written once in
``RestApi``. How each VMM words a refusal (a ``fault_message`` object, an error
chain) and which coded errors it raises stay in its backend's subclass.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Self

import anyio
import httpx

from mvm.backends.abc.types import ApiCall, VmmHandle
from mvm.backends.vmm.control import ProcessControl
from mvm.backends.vmm.handle import H
from mvm.engine.base.errors import BackendError

DEFAULT_TIMEOUT_S = 10.0


@asynccontextmanager
async def uds_client(socket: Path, *, timeout: float) -> AsyncIterator[httpx.AsyncClient]:
    """One connection-pooling client for the API socket ``socket``."""
    transport = httpx.AsyncHTTPTransport(uds=str(socket))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://localhost", timeout=timeout
    ) as client:
        yield client


def decode(response: httpx.Response) -> Any:
    """A successful answer: decoded JSON, the text if it is not JSON, None if empty."""
    if response.status_code == 204 or not response.content:
        return None
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text


class RestApi(ABC):
    """One connection-pooling client per API socket; use ``open``."""

    prefix = ""  # prepended to every path: Cloud Hypervisor's "/api/v1/"

    def __init__(self, client: httpx.AsyncClient, socket: Path) -> None:
        self._client = client
        self.socket = socket

    @classmethod
    @asynccontextmanager
    async def open(cls, socket: Path, *, timeout: float = DEFAULT_TIMEOUT_S) -> AsyncIterator[Self]:
        async with uds_client(socket, timeout=timeout) as client:
            yield cls(client, socket)

    @abstractmethod
    def socket_error(self, method: str, path: str, why: str) -> BackendError:
        """The coded error for a socket that did not answer ``method path``."""

    @abstractmethod
    def api_error(self, method: str, path: str, response: httpx.Response) -> BackendError:
        """The coded error for a refused request (and where it is logged)."""

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Send one request; the decoded JSON answer (None for 204), or a coded error."""
        try:
            response = await self._client.request(method, self.prefix + path, json=body)
        except httpx.TransportError as exc:
            raise self.socket_error(method, path, str(exc) or type(exc).__name__) from None
        if response.status_code >= 400:
            raise self.api_error(method, path, response)
        return decode(response)

    async def call(self, call: ApiCall) -> Any:
        return await self.request(call.method, call.path, call.body)

    async def get(self, path: str) -> Any:
        return await self.request("GET", path)

    @abstractmethod
    async def state(self) -> str:
        """The VM's state as the VMM names it; ``Running`` is the one both agree on."""

    @abstractmethod
    async def pause(self) -> None: ...

    @abstractmethod
    async def resume(self) -> None: ...

    @asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """The VM paused for the body (these VMMs snapshot only a paused VM); a VM that
        was running is resumed afterwards, shielded, whatever the body did."""
        running = await self.state() == "Running"
        if running:
            await self.pause()
        try:
            yield
        finally:
            if running:
                with anyio.CancelScope(shield=True):
                    await self.resume()


class RestControl(ProcessControl[H]):
    """``ProcessControl`` for a VMM driven over a REST API: pause and resume are calls."""

    api_type: type[RestApi]

    async def pause(self, handle: VmmHandle) -> None:
        async with self.api_type.open(handle.plan.control_socket) as api:
            await api.pause()

    async def resume(self, handle: VmmHandle) -> None:
        async with self.api_type.open(handle.plan.control_socket) as api:
            await api.resume()
