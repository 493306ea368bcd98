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
from typing import Any

import httpx

from mvm.backends.vmm.rest import RestApi
from mvm.engine.base.errors import BackendError
from mvm.engine.base.log import get_logger

log = get_logger("mvm.firecracker.api")


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


class FirecrackerApi(RestApi):
    """Firecracker's API: paths like ``/boot-source``; a refusal carries ``fault_message``."""

    def socket_error(self, method: str, path: str, why: str) -> BackendError:
        return FirecrackerSocketError(
            f"Firecracker API socket {self.socket} did not answer {method} {path}: {why}"
        )

    def api_error(self, method: str, path: str, response: httpx.Response) -> BackendError:
        error = FirecrackerApiError(method, path, response.status_code, fault_message(response))
        log.info("firecracker.api_fault", method=method, path=path, fault=error.fault)
        return error

    async def put(self, path: str, body: dict[str, Any]) -> Any:
        return await self.request("PUT", path, body)

    async def patch(self, path: str, body: dict[str, Any]) -> Any:
        return await self.request("PATCH", path, body)

    async def state(self) -> str:
        """``Not started`` / ``Running`` / ``Paused`` as Firecracker reports it."""
        info = await self.get("/")
        return str(info.get("state", "")) if isinstance(info, dict) else ""

    async def pause(self) -> None:
        await self.patch("/vm", {"state": "Paused"})

    async def resume(self) -> None:
        await self.patch("/vm", {"state": "Resumed"})
