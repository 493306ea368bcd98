"""A small client for Firecracker's REST API on its Unix socket.

Firecracker answers every failed request with ``{"fault_message": "..."}`` and a
4xx/5xx status. That message is the only useful diagnosis the user gets (a
missing kernel, a second root drive, an action in the wrong VM state), so it is
surfaced verbatim in a ``FirecrackerApiError`` (code ``E_FC_API``) together with
the method and path that failed. A socket that cannot be reached at all is a
different failure (``E_FC_SOCKET``): the VMM is gone or never started.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import structlog

from mvm.backends.abc.types import ApiCall
from mvm.backends.vmm.rest import decode, uds_client
from mvm.engine.base.errors import BackendError

log = structlog.get_logger("mvm.firecracker.api")

DEFAULT_TIMEOUT_S = 10.0


class FirecrackerApiError(BackendError):
    """Firecracker refused a request; ``fault`` is its own ``fault_message``."""

    code = "E_FC_API"

    def __init__(self, method: str, path: str, status: int, fault: str) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.fault = fault
        super().__init__(f"Firecracker {method} {path} failed ({status}): {fault}")


class FirecrackerSocketError(BackendError):
    """The API socket did not answer (VMM exited, not started, or hung)."""

    code = "E_FC_SOCKET"


def fault_message(response: httpx.Response) -> str:
    """Firecracker's ``fault_message``, or the raw body when it is not the usual JSON."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text.strip() or response.reason_phrase
    if isinstance(body, dict) and isinstance(body.get("fault_message"), str):
        return str(body["fault_message"])
    return response.text.strip()


class FirecrackerApi:
    """One connection-pooling client per API socket; use ``FirecrackerApi.open``."""

    def __init__(self, client: httpx.AsyncClient, socket: Path) -> None:
        self._client = client
        self.socket = socket

    @classmethod
    @asynccontextmanager
    async def open(
        cls, socket: Path, *, timeout: float = DEFAULT_TIMEOUT_S
    ) -> AsyncIterator[FirecrackerApi]:
        async with uds_client(socket, timeout=timeout) as client:
            yield cls(client, socket)

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Send one request; the decoded JSON answer (None for 204), or a coded error."""
        try:
            response = await self._client.request(method, path, json=body)
        except httpx.TransportError as exc:
            raise FirecrackerSocketError(
                f"Firecracker API socket {self.socket} did not answer {method} {path}: "
                f"{exc or type(exc).__name__}"
            ) from None
        if response.status_code >= 400:
            error = FirecrackerApiError(method, path, response.status_code, fault_message(response))
            log.info("firecracker.api_fault", method=method, path=path, fault=error.fault)
            raise error
        return decode(response)

    async def call(self, call: ApiCall) -> Any:
        return await self.request(call.method, call.path, call.body)

    async def get(self, path: str) -> Any:
        return await self.request("GET", path)

    async def put(self, path: str, body: dict[str, Any]) -> Any:
        return await self.request("PUT", path, body)

    async def patch(self, path: str, body: dict[str, Any]) -> Any:
        return await self.request("PATCH", path, body)

    async def state(self) -> str:
        """``Not started`` / ``Running`` / ``Paused`` as Firecracker reports it."""
        info = await self.get("/")
        return str(info.get("state", "")) if isinstance(info, dict) else ""
