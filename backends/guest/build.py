"""Build the guest agent (static C) and locate the guest ``/init``.

The agent is compiled on demand and cached by content: the key hashes every
source file, the compiler's identity and the variant, so editing a source or
upgrading the toolchain rebuilds it, and every checkout shares one binary per key.
Static linking matters: the guest has no dynamic loader and no libc of its own.

Two variants come from the same sources. The accessible one serves ``exec``,
``console`` (and so ``cp``) and has the root ``spawnd`` helper; the sealed one is
compiled with ``-DMVM_AGENT_SEALED``, which leaves that code out entirely (the seeds:
"in production builds, the do_exec symbol is gated out"): those requests get a
coded ``E_SEALED`` error. The binaries keep their symbol table (no ``-s``, ~25 KiB)
so that ``nm`` on the very file an image ships shows what is in it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from mvm.engine.base.errors import BuildError
from mvm.engine.base.log import get_logger
from mvm.engine.base.paths import cache_dir

log = get_logger("mvm.agent.build")

_HERE = Path(__file__).resolve().parent
# Bump when the compile recipe changes in a way the key would not see.
RECIPE_VERSION = "2"
CFLAGS = ("-static", "-Os", "-std=gnu11", "-Wall", "-Wextra", "-Werror")
SEALED_DEFINE = "-DMVM_AGENT_SEALED"
# musl gives a ~100 KiB binary with working openpty; glibc's static libc is the fallback.
COMPILERS = ("musl-gcc", "gcc")
SETUP_HINT = "run ./scripts/setup"


def agent_sources() -> list[Path]:
    """Every file the agent is built from (the main file first, then the modules)."""
    modules = _HERE / "agent"
    return [
        _HERE / "agent.c",
        *sorted(modules.glob("*.c")),
        *sorted(modules.glob("*.h")),
    ]


def init_script() -> Path:
    """The busybox shell script that runs as the guest's PID 1."""
    return _HERE / "init"


def _compiler() -> tuple[str, str]:
    for name in COMPILERS:
        path = shutil.which(name)
        if path is not None:
            return name, path
    raise BuildError(
        "no C compiler for the guest agent (musl-gcc or gcc)",
        code="E_AGENT_TOOLCHAIN",
        hint=SETUP_HINT,
    )


def _compiler_identity(path: str) -> str:
    try:
        result = subprocess.run(
            [path, "--version"], capture_output=True, text=True, check=False, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildError(
            f"{path} --version failed: {exc}", code="E_AGENT_TOOLCHAIN", hint=SETUP_HINT
        ) from None
    lines = result.stdout.splitlines()
    return lines[0] if lines else ""


def _flags(sealed: bool) -> tuple[str, ...]:
    return (*CFLAGS, SEALED_DEFINE) if sealed else CFLAGS


def _cache_key(name: str, identity: str, sources: list[Path], flags: tuple[str, ...]) -> str:
    h = hashlib.sha256()

    def part(data: bytes) -> None:
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)

    for item in ("mvm-agent", RECIPE_VERSION, name, identity, " ".join(flags)):
        part(item.encode())
    for src in sources:
        part(str(src.relative_to(_HERE)).encode())
        part(src.read_bytes())
    return h.hexdigest()


def agent_binary(*, sealed: bool = False) -> Path:
    """Path of the compiled agent, building it if this source + compiler has no cached copy.

    ``sealed`` picks the production variant (no exec/console/spawnd/PTY code).

    Blocking (a compile takes about a second): async callers use ``anyio.to_thread``.
    Concurrent callers, in threads or processes, may both compile; each renames a
    complete file into place, so a reader never sees a partial binary.
    """
    name, compiler = _compiler()
    sources = agent_sources()
    flags = _flags(sealed)
    key = _cache_key(name, _compiler_identity(compiler), sources, flags)
    final = cache_dir() / "agent" / key / "mvm-agent"
    if final.is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=final.parent) as tmp:
        out = Path(tmp) / "mvm-agent"
        c_files = [str(s) for s in sources if s.suffix == ".c"]
        argv = [compiler, *flags, "-o", str(out), *c_files]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BuildError(
                f"compiling the guest agent failed: {exc}",
                code="E_AGENT_TOOLCHAIN",
                hint=SETUP_HINT,
            ) from None
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise BuildError(
                f"compiling the guest agent with {name} failed: "
                f"{detail[0] if detail else f'exit {result.returncode}'}",
                code="E_AGENT_BUILD",
            )
        os.chmod(out, 0o755)
        os.replace(out, final)
    log.info(
        "agent.built",
        compiler=name,
        sealed=sealed,
        key=key[:16],
        bytes=final.stat().st_size,
    )
    return final
