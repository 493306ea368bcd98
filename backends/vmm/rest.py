"""JSON over HTTP on a Unix socket: the transport of Firecracker's and Cloud Hypervisor's APIs.

Only the transport is shared; how each VMM reports a failed request (a
``fault_message`` object, an error chain) stays in its backend's client.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx


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
