"""`mvmctl invoke NAME --input k=v ... | --json FILE`: call a running VM's function.

Prints the decoded result as JSON on stdout (``"hello, Alice"``, quotes included).
A function error is one coded line on stderr (``error[E_FUNCTION_FAILED]: ...``)
and a non-zero exit, like every other mvmctl error. ``--count N`` repeats the
call; with ``--warm K`` the calls go through a pool of K long-running wrappers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import anyio

from mvm.engine.base.errors import ConfigError
from mvm.engine.images.invoke_schema import schemas_of_image
from mvm.engine.invoke import (
    WarmPool,
    invoke,
    parse_inputs,
    parse_request_file,
)
from mvm.engine.vm.agent_access import open_vm_agent, running_vm


def _request(args: argparse.Namespace) -> tuple[list[Any], dict[str, Any]]:
    if args.json is not None:
        try:
            data = sys.stdin.buffer.read() if str(args.json) == "-" else args.json.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read {args.json}: {exc.strerror}", code="E_INVOKE_ARGS"
            ) from None
        return parse_request_file(data)
    return [], parse_inputs(args.input)


def _print(result: Any) -> None:
    sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
    sys.stdout.flush()


async def cmd_invoke(args: argparse.Namespace) -> int:
    call_args, kwargs = _request(args)
    if args.count < 1 or args.warm < 0:
        raise ConfigError("--count must be >= 1 and --warm >= 0", code="E_INVOKE_ARGS")
    record = await running_vm(args.name)
    schemas = await anyio.to_thread.run_sync(schemas_of_image, Path(record.image))
    async with open_vm_agent(args.name) as client:
        if args.warm:
            async with WarmPool.open(client, args.warm) as pool:
                for _ in range(args.count):
                    _print(
                        await pool.invoke(call_args, kwargs, timeout=args.timeout, schemas=schemas)
                    )
        else:
            for _ in range(args.count):
                _print(
                    await invoke(client, call_args, kwargs, timeout=args.timeout, schemas=schemas)
                )
    return 0
