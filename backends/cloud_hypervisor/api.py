"""A small client for Cloud Hypervisor's REST API (``/api/v1/...``) on its Unix socket.

Failed requests come back as 4xx/5xx with the error chain in the body: a JSON
list of messages in current releases, plain text in older ones. Either way the
whole chain is joined into one line (``E_CH_API``) with the endpoint that failed.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from mvm.backends.vmm.rest import RestApi
from mvm.engine.base.errors import BackendError
from mvm.engine.base.log import get_logger

log = get_logger("mvm.cloud_hypervisor.api")

API_PREFIX = "/api/v1/"


class ChApiError(BackendError):
    """Cloud Hypervisor refused a request; ``detail`` is its error chain on one line."""

    code = "E_CH_API"

    def __init__(self, endpoint: str, status: int, detail: str) -> None:
        self.endpoint = endpoint
        self.status = status
        self.detail = detail
        super().__init__(f"Cloud Hypervisor {endpoint} failed ({status}): {detail}")


class ChSocketError(BackendError):
    """The API socket did not answer (VMM exited, not started, or hung)."""

    code = "E_CH_SOCKET"


def error_detail(response: httpx.Response) -> str:
    text = response.text.strip()
    try:
        body = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return text or response.reason_phrase
    if isinstance(body, list) and all(isinstance(item, str) for item in body):
        return ": ".join(item.strip() for item in body)
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return text


class ChApi(RestApi):
    """Cloud Hypervisor's API: endpoints are named like ``vm.boot`` (under ``/api/v1/``)."""

    prefix = API_PREFIX

    def socket_error(self, method: str, path: str, why: str) -> BackendError:
        return ChSocketError(
            f"Cloud Hypervisor API socket {self.socket} did not answer {path}: {why}"
        )

    def api_error(self, method: str, path: str, response: httpx.Response) -> BackendError:
        error = ChApiError(path, response.status_code, error_detail(response))
        log.info("cloud_hypervisor.api_error", endpoint=path, detail=error.detail)
        return error

    async def put(self, endpoint: str, body: dict[str, Any] | None = None) -> Any:
        """``endpoint`` is e.g. ``vm.boot``; returns decoded JSON, or None for 204."""
        return await self.request("PUT", endpoint, body)

    async def state(self) -> str:
        """``Created`` / ``Running`` / ``Paused`` / ``Shutdown`` from ``vm.info``."""
        info = await self.get("vm.info")
        return str(info.get("state", "")) if isinstance(info, dict) else ""

    async def pause(self) -> None:
        await self.put("vm.pause")

    async def resume(self) -> None:
        await self.put("vm.resume")
