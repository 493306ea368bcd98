"""Embedding the engine in an asyncio app writes nothing to stdout or stderr (issue 16).

structlog's own default (a ``PrintLogger`` on stdout) printed ~25 lines per VM into the
host app's stdout; the library now routes through stdlib logging, silent until the host
configures it. The app runs in a fresh interpreter (logging state is per process) and
does what the README's example does, on the stub backend: open, start, exec, stop.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parents[1]

APP = """
import asyncio, json, sys
from pathlib import Path
from mvm import Engine, EventKind, VmRequest

async def main(image: Path, out: Path) -> None:
    async with Engine.open() as engine:
        async with engine.events() as events:
            vm = await engine.start(VmRequest(name="embedded", image_dir=image, backend="stub"))
            result = await vm.exec(["echo", "from-the-guest"])
            code = await vm.stop()
            kinds = []
            async for ev in events:
                kinds.append(str(ev.kind))
                if ev.kind == EventKind.VM_STOPPED:
                    break
    out.write_text(json.dumps({"stdout": result.stdout.decode(), "exit": result.code,
                               "stop": code, "kinds": kinds}))

CONFIGURE
asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2])))
"""


def _run_app(tmp_path: Path, configure: str = "") -> tuple[subprocess.CompletedProcess[str], dict]:  # type: ignore[type-arg]
    image = tmp_path / "image"
    image.mkdir()
    (image / "vmlinux").write_bytes(b"fake")
    (image / "rootfs.ext4").write_bytes(b"fake")
    (image / "mvm-meta.json").write_text(json.dumps({"name": "fake", "sealed": False}))
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-P", "-c", APP.replace("CONFIGURE", configure), str(image), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "MVM_LOG_LEVEL"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


def test_an_asyncio_app_embedding_the_engine_sees_nothing_on_stdout_or_stderr(
    tmp_path: Path,
) -> None:
    proc, result = _run_app(tmp_path)
    # it really ran: the exec answered and the engine published the VM's life
    assert result["stdout"] == "from-the-guest\n" and result["exit"] == 0
    assert "vm.ready" in result["kinds"] and result["kinds"][-1] == "vm.stopped"
    assert proc.stdout == ""
    assert proc.stderr == ""


def test_the_host_app_sees_the_engine_lines_once_it_configures_logging(tmp_path: Path) -> None:
    """Silent is the default, not a black hole: stdlib logging configured = lines shown."""
    configure = "import logging; logging.basicConfig(level=logging.INFO, stream=sys.stderr)"
    proc, _ = _run_app(tmp_path, configure)
    assert proc.stdout == ""
    assert "INFO:mvm.events:vm.ready" in proc.stderr
    assert "vm.stopped" in proc.stderr


@pytest.fixture(autouse=True)
def _home(mvm_home: Path) -> None:
    """The app reads $MVM_HOME (the per-test home of tests/conftest.py)."""
