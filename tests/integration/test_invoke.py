"""Function invocation end to end.

First against the real agent as a host process (sealed, TCP) with the real wrapper
on the host's python: run-entrypoint, cold invoke, the warm pool, coded errors.
Then the worked example in a real QEMU guest: emit -> validate -> build -> up ->
``mvmctl invoke hello --input name=Alice`` prints ``"hello, Alice"``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
import trio

from mvm import Image
from mvm.backends.guest.build import agent_binary
from mvm.backends.guest.client import AgentClient
from mvm.engine.admission.audit import AuditLog
from mvm.engine.base.errors import AgentError, MvmError
from mvm.engine.builders.offline_image import build_offline_image
from mvm.engine.images.ir_image import load_ir_spec
from mvm.engine.invoke import FunctionError, WarmPool, invoke
from mvm.engine.ir import ir_hash, validate_text

from .conftest import qemu_pids

HELLO = Path(__file__).resolve().parents[1] / "fixtures" / "hello"
WRAPPER = Path(__file__).resolve().parents[2] / "backends" / "guest" / "wrapper.py"
# Registers the invoke verb if mvm/cli/app.py does not (yet) do so itself.
MVMCTL = [
    sys.executable,
    "-c",
    "import sys\n"
    "from mvm.cli import app, invoke_commands\n"
    "build = app.build_parser\n"
    "def parser():\n"
    "    p = build()\n"
    "    sub = p._subparsers._group_actions[0]\n"
    "    if 'invoke' not in sub.choices:\n"
    "        invoke_commands.register(sub)\n"
    "    return p\n"
    "app.build_parser = parser\n"
    "app.main(sys.argv[1:])\n",
]


def mvmctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MVMCTL, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


# ------------------------------------------------------------------------- host agent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _agent(tmp_path: Path, wrapper_json: dict[str, object] | None) -> Iterator[int]:
    port = _free_port()
    for d in ("health", "logs"):
        (tmp_path / d).mkdir()
    os.mkfifo(tmp_path / "ctl")
    cfg = tmp_path / "wrapper.json"
    if wrapper_json is not None:
        cfg.write_text(json.dumps(wrapper_json))
    argv = [
        str(agent_binary()), "--tcp-listen", f"127.0.0.1:{port}", "--sealed",
        "--health-dir", str(tmp_path / "health"), "--log-dir", str(tmp_path / "logs"),
        "--ctl", str(tmp_path / "ctl"), "--wrapper", str(cfg),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield port
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def function_agent(tmp_path: Path) -> Iterator[int]:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "fn.py").write_text(
        "import os\n"
        "def greet(name):\n    return f'hello, {name}'\n\n"
        "def pid():\n    return os.getpid()\n\n"
        "def boom():\n    raise RuntimeError('disk /srv/app/x.db is full')\n"
    )
    # The wrapper's own config in the seed's shape (what /etc/mvm/wrapper.json holds).
    config = tmp_path / "fn-wrapper.json"
    config.write_text(
        json.dumps({"module": "fn", "function": "greet", "format": "json",
                    "working_dir": str(tmp_path / "app"), "mode": "prod"})
    )  # fmt: skip
    # The agent's --wrapper file here names a program (a host has no /etc/mvm/entrypoint).
    yield from _agent(
        tmp_path,
        {"argv": [sys.executable, "-s", str(WRAPPER)], "env": {"MVM_WRAPPER_JSON": str(config)}},
    )


@asynccontextmanager
async def _client(port: int) -> AsyncIterator[AgentClient]:
    with anyio.fail_after(10):
        while True:
            try:
                stream = await anyio.connect_tcp("127.0.0.1", port)
                break
            except OSError:
                await anyio.sleep(0.01)
    async with AgentClient.connect(stream, hello_timeout=10) as client:
        yield client


async def test_run_is_allowed_on_sealed_images_and_invokes(function_agent: int) -> None:
    async with _client(function_agent) as client:
        assert client.hello["sealed"] is True
        assert await invoke(client, [], {"name": "Alice"}) == "hello, Alice"
        with pytest.raises(FunctionError) as info:
            await invoke(client, [], {"nom": "x"})
        assert info.value.code == "E_FUNCTION_ARGS"


async def test_run_refuses_a_bad_mode(function_agent: int) -> None:
    async with _client(function_agent) as client:
        with pytest.raises(AgentError) as info:
            async with client.open_run(mode="shell"):
                pass
        assert info.value.code == "E_RUN_ARGS"


async def test_no_wrapper_file_is_a_coded_error(tmp_path: Path) -> None:
    for port in _agent(tmp_path, None):
        async with _client(port) as client:
            with pytest.raises(AgentError) as info:
                await invoke(client, [], {})
            assert info.value.code == "E_RUN_NO_ENTRYPOINT"


async def test_warm_pool_reuses_processes(function_agent: int) -> None:
    async with _client(function_agent) as client, WarmPool.open(client, 2) as pool:
        assert pool.ready == 2
        results = await _gather(pool, 10)
        assert results == [f"hello, n{i}" for i in range(10)]


async def _gather(pool: WarmPool, n: int) -> list[object]:
    out: list[object] = [None] * n

    async def one(i: int) -> None:
        out[i] = await pool.invoke([f"n{i}"], {})

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    return out


# ------------------------------------------------------------------------- real guest


def _debugfs_cat(rootfs: Path, path: str) -> str:
    out = subprocess.run(
        ["debugfs", "-R", f"cat {path}", str(rootfs)],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return out.stdout


# The seed's worked example (workload-ir-to-image, "The emitted IR"), verbatim.
SEED_IR = """{ "schema_version": "0.1", "id": "hello", "apps": [ { "name": "hello", "source": { "kind": "local_path", "path": "./src", "include": ["**"], "exclude": [] }, "image": { "kind": "nix_packages", "packages": ["python3"] }, "entrypoints": [ { "kind": "function", "language": "python", "module": "app", "function": "greet", "format": "json", "primary": true } ], "resources": { "vcpus": 1, "memory_mb": 256, "boot_timeout_secs": 30 }, "dependencies": { "kind": "none" } } ], "volumes": [], "extensions": {}}"""  # noqa: E501 (verbatim seed)
SEED_APP_PY = """def greet(name: str) -> str: return f"hello, {name}"
"""


@pytest.fixture(scope="module")
def hello_ir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seed's IR next to its src/app.py; the emitted hello IR while the IR model
    does not read the seed's kind-tagged wire format yet."""
    root = tmp_path_factory.mktemp("seed-hello")
    (root / "src").mkdir()
    (root / "src" / "app.py").write_text(SEED_APP_PY)
    path = root / "workload-ir.json"
    path.write_text(SEED_IR)
    try:
        validate_text(SEED_IR.encode(), base_dir=root)
    except MvmError:
        emit = subprocess.run(
            [sys.executable, "-m", "mvm.cli", "emit", str(HELLO / "entry.py")],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert emit.returncode == 0, emit.stderr
        doc = json.loads(emit.stdout)
        doc["apps"][0]["source"] = {"local_path": {"path": "./src"}}
        path.write_text(json.dumps(doc))
    return path


@pytest.mark.qemu
def test_hello_greet_in_a_real_guest(hello_ir: Path) -> None:
    validate = subprocess.run(
        [sys.executable, "-m", "mvm.cli", "validate", str(hello_ir)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert validate.returncode == 0, validate.stderr

    async def build() -> Image:
        return await build_offline_image(await load_ir_spec(hello_ir))

    image = trio.run(build)
    assert image.sealed and image.meta["entrypointKind"] == "command"
    files = {
        p: _debugfs_cat(image.directory / "rootfs.ext4", p)
        for p in ("/etc/mvm/wrapper.json", "/etc/mvm/runtime.json", "/etc/mvm/entrypoint")
    }
    assert json.loads(files["/etc/mvm/wrapper.json"]) == {
        "module": "app",
        "function": "greet",
        "format": "json",
        "working_dir": "/app",
        "mode": "prod",
    }
    assert json.loads(files["/etc/mvm/runtime.json"]) == {
        "language": "python",
        "module": "app",
        "function": "greet",
        "format": "json",
        "source_path": "/app",
    }
    assert "/usr/lib/mvm/wrappers/runner" in files["/etc/mvm/entrypoint"]
    before = qemu_pids()
    up = mvmctl("up", str(hello_ir), "--name", "hello")  # the IR file itself, as a user would
    assert up.returncode == 0, up.stderr
    try:
        t0 = time.monotonic()
        out = mvmctl("invoke", "hello", "--input", "name=Alice")
        cold = time.monotonic() - t0
        assert out.returncode == 0, out.stderr
        assert out.stdout == '"hello, Alice"\n'
        bad = mvmctl("invoke", "hello", "--input", "nom=Alice")
        assert bad.returncode != 0
        assert bad.stderr.startswith("error[E_FUNCTION_ARGS]: bad arguments"), bad.stderr
        assert "/srv" not in bad.stderr and "Traceback" not in bad.stderr
        many = mvmctl("invoke", "hello", "--input", "name=Bob", "--count", "3")
        assert many.returncode == 0, many.stderr
        assert many.stdout.splitlines() == ['"hello, Bob"'] * 3
        # No concurrency block in the IR: the oneshot wrapper, so no warm pool.
        warm = mvmctl("invoke", "hello", "--input", "name=Bob", "--count", "3", "--warm", "2")
        assert warm.returncode != 0
        assert warm.stderr.startswith("error[E_WRAPPER_MODE]"), warm.stderr
        print(f"cold mvmctl invoke: {cold:.2f}s")
    finally:
        down = mvmctl("down", "hello")
    assert down.returncode == 0, down.stderr
    assert qemu_pids() == before
    # The launch went through a signed plan naming this exact IR, admitted before dispatch.
    expected = ir_hash(validate_text(hello_ir.read_bytes(), base_dir=hello_ir.parent))
    events = [(e.event, e.data) for e in AuditLog().entries() if e.data.get("vm") == "hello"]
    assert [kind for kind, _ in events] == ["plan.admitted", "plan.launched"], events
    assert {data["ir_hash"] for _, data in events} == {expected}
    assert {data["admission_profile"] for _, data in events} == {"prod"}  # sealed image
    verify = mvmctl("audit", "verify")
    assert verify.returncode == 0 and "2 entries" in verify.stdout, verify.stdout
