"""The microVM kernel: built once from Debian's ``linux-source`` with our fragment, then cached.

A distro kernel boots in seconds under TCG; ``tinyconfig`` plus
``kernel/microvm.config`` boots to ``/init`` in under one. The build takes
minutes, so the result is content-addressed (source package version + fragment
bytes + ``RECIPE_VERSION``) under ``cache_dir()/kernel/<key>/vmlinux`` and shared
by every checkout. Two processes asking at once serialise on a per-key
``flock``; the loser finds the winner's kernel. Nothing half-built is ever
visible: the build runs in a ``.build-*`` work dir that is renamed into place,
and removed (shielded from cancellation) whatever happens.

``MVM_KERNEL`` short-circuits all of this for users who bring their own vmlinux.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import IO

import anyio
import attrs

from mvm.engine.base.errors import BuildError, ConfigError
from mvm.engine.base.log import get_logger
from mvm.engine.base.paths import cache_dir
from mvm.engine.base.settings import current_settings

log = get_logger("mvm.kernel")

ProgressFn = Callable[[str, float | None], None]

# Bump when the build steps change in a way that changes the vmlinux.
RECIPE_VERSION = "1"
SOURCE_PACKAGE = "linux-source-6.1"
SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
FRAGMENT = Path(__file__).with_name("kernel") / "microvm.config"
SETUP_HINT = "run ./scripts/setup (apt-get install linux-source-6.1)"
# `make vmlinux` on tinyconfig + fragment prints ~1840 lines (measured on 6.1.192);
# the compile fraction is lines seen / this, capped below 1.
EXPECTED_MAKE_LINES = 1850
_TAIL_LINES = 40
_ERROR_LINE = re.compile(r"\berror\b", re.IGNORECASE)
_Y_OPTION = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=y\s*$")


@attrs.frozen
class KernelSource:
    """Where the kernel source comes from and which version it is (part of the cache key)."""

    version: str
    tarball: Path


def _no_progress(phase: str, fraction: float | None) -> None:
    return None


def find_source(package: str = SOURCE_PACKAGE, tarball: Path = SOURCE_TARBALL) -> KernelSource:
    """The installed linux-source package; E_KERNEL_SOURCE if it is absent."""
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${db:Status-Status}\t${Version}", package],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        raise BuildError(
            f"cannot query {package}: dpkg-query not found (not a Debian host?)",
            code="E_KERNEL_SOURCE",
            hint=f"{SETUP_HINT}, or set MVM_KERNEL to a vmlinux",
        ) from None
    status, _, version = out.stdout.partition("\t")
    if out.returncode != 0 or status != "installed" or not version:
        raise BuildError(f"{package} is not installed", code="E_KERNEL_SOURCE", hint=SETUP_HINT)
    if not tarball.is_file():
        raise BuildError(f"{tarball} is missing", code="E_KERNEL_SOURCE", hint=SETUP_HINT)
    return KernelSource(version=version, tarball=tarball)


def kernel_cache_key(*, version: str | None = None, fragment: bytes | None = None) -> str:
    """Content address of the kernel: source version + fragment bytes + recipe version."""
    if version is None:
        version = find_source().version
    if fragment is None:
        fragment = FRAGMENT.read_bytes()
    h = hashlib.sha256()
    for part in (b"mvm-kernel", RECIPE_VERSION.encode(), version.encode(), fragment):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def required_options(fragment_text: str) -> list[str]:
    """The options the fragment switches on (``CONFIG_X=y``), in fragment order."""
    return [m.group(1) for line in fragment_text.splitlines() if (m := _Y_OPTION.match(line))]


def missing_options(fragment_text: str, config_text: str) -> list[str]:
    """Fragment ``=y`` options that Kconfig dropped (unmet dependency, unknown name)."""
    enabled = {m.group(1) for line in config_text.splitlines() if (m := _Y_OPTION.match(line))}
    return [opt for opt in required_options(fragment_text) if opt not in enabled]


def verify_config(fragment: Path, config: Path) -> None:
    """Fail loudly if the merged .config lost an option: a silently dropped
    driver shows up much later as a guest that cannot find its disk."""
    missing = missing_options(fragment.read_text(), config.read_text())
    if missing:
        raise BuildError(
            f"kernel config lacks {', '.join(missing)} after olddefconfig",
            code="E_KERNEL_CONFIG",
            hint=f"fix dependencies or names in {fragment}",
        )


def user_kernel() -> Path | None:
    """The ``MVM_KERNEL`` override, if set; E_KERNEL_MISSING if it names no file."""
    value = current_settings().kernel
    if value is None:
        return None
    path = value.expanduser()
    if not path.is_file():
        raise ConfigError(
            f"MVM_KERNEL={value} is not a file",
            code="E_KERNEL_MISSING",
            hint="point MVM_KERNEL at a vmlinux or unset it",
        )
    return path.resolve()


async def ensure_kernel(
    progress: ProgressFn | None = None,
    *,
    source: KernelSource | None = None,
    jobs: int | None = None,
) -> Path:
    """The cached microVM vmlinux, building it first if no process has yet."""
    override = user_kernel()
    if override is not None:
        log.info("kernel.override", path=str(override))
        return override
    report = progress or _no_progress
    src = source or find_source()
    if not src.tarball.is_file():
        raise BuildError(f"{src.tarball} is missing", code="E_KERNEL_SOURCE", hint=SETUP_HINT)
    key = kernel_cache_key(version=src.version)
    root = cache_dir() / "kernel"
    vmlinux = root / key / "vmlinux"
    if vmlinux.is_file():
        return vmlinux
    root.mkdir(parents=True, exist_ok=True)
    async with _exclusive(root / f"{key}.lock", report):
        if vmlinux.is_file():  # another process built it while we waited
            return vmlinux
        _remove_stale_work(root, key)
        await _build(src, root, key, report, jobs or _default_jobs())
    report("kernel: done", 1.0)
    return vmlinux


def _default_jobs() -> int:
    explicit = current_settings().kernel_jobs  # a positive int, checked at the edge
    if explicit is not None:
        return explicit
    return len(os.sched_getaffinity(0)) or 1


@asynccontextmanager
async def _exclusive(lock_path: Path, report: ProgressFn) -> AsyncIterator[None]:
    """A per-key flock. Waiting happens in a worker thread so the event loop stays
    live; on cancellation the thread is abandoned and closing the fd releases any
    lock it later acquires (flock locks die with their open file description)."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("kernel.lock.wait", lock=str(lock_path))
            report("kernel: waiting for another build", None)
            await anyio.to_thread.run_sync(fcntl.flock, fd, fcntl.LOCK_EX, abandon_on_cancel=True)
        yield
    finally:
        os.close(fd)


def _remove_stale_work(root: Path, key: str) -> None:
    """Work dirs of a build that was SIGKILLed; safe to remove because we hold the lock."""
    for stale in root.glob(f".build-{key}-*"):
        log.info("kernel.stale_removed", path=str(stale))
        shutil.rmtree(stale, ignore_errors=True)


async def _build(src: KernelSource, root: Path, key: str, report: ProgressFn, jobs: int) -> None:
    work = root / f".build-{key}-{uuid.uuid4().hex[:8]}"
    log_path = root / f"{key}.build.log"
    log.info("kernel.build.start", key=key, version=src.version, jobs=jobs)
    started = anyio.current_time()
    try:
        work.mkdir()
        with log_path.open("w") as build_log:
            runner = _Runner(build_log, log_path)
            report(f"kernel: extracting {SOURCE_PACKAGE} {src.version}", None)
            await runner.run(["tar", "-xf", str(src.tarball), "-C", str(work)], cwd=work)
            tree = _single_tree(work)
            report("kernel: configuring", None)
            await runner.run(["make", "tinyconfig"], cwd=tree)
            await runner.run(
                ["bash", "scripts/kconfig/merge_config.sh", "-m", ".config", str(FRAGMENT)],
                cwd=tree,
            )
            await runner.run(["make", "olddefconfig"], cwd=tree)
            verify_config(FRAGMENT, tree / ".config")
            seen = 0

            def compiled(line: str) -> None:
                nonlocal seen
                seen += 1
                report("kernel: compiling", min(0.99, seen / EXPECTED_MAKE_LINES))

            report("kernel: compiling", 0.0)
            await runner.run(["make", f"-j{jobs}", "vmlinux"], cwd=tree, on_line=compiled)
            stage = work / "stage"
            stage.mkdir()
            os.replace(tree / "vmlinux", stage / "vmlinux")
            shutil.copyfile(tree / ".config", stage / "config")
            os.rename(stage, root / key)  # atomic promotion: readers see all or nothing
        log_path.unlink(missing_ok=True)
        log.info("kernel.build.done", key=key, seconds=round(anyio.current_time() - started, 1))
    except BuildError:
        raise  # keep the log: the error's hint points at it
    except BaseException:
        log_path.unlink(missing_ok=True)  # cancelled (Ctrl-C): leave nothing behind
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(shutil.rmtree, work, True)


def _single_tree(work: Path) -> Path:
    trees = [p for p in work.iterdir() if p.is_dir() and (p / "Makefile").is_file()]
    if len(trees) != 1:
        raise BuildError(
            f"expected one kernel tree in the source tarball, found {len(trees)}",
            code="E_KERNEL_SOURCE",
            hint=SETUP_HINT,
        )
    return trees[0]


def _build_env() -> dict[str, str]:
    env = dict(os.environ)
    # Fixed build identity: the same inputs give the same vmlinux on any host.
    env.update(
        LC_ALL="C",
        KBUILD_BUILD_TIMESTAMP="1970-01-01",
        KBUILD_BUILD_USER="mvm",
        KBUILD_BUILD_HOST="mvm",
    )
    return env


@attrs.define
class _Runner:
    """Runs build steps, teeing their output to the build log and a short tail
    that the error message quotes."""

    build_log: IO[str]
    log_path: Path
    tail: deque[str] = attrs.field(factory=lambda: deque(maxlen=_TAIL_LINES))

    async def run(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        self.build_log.write(f"$ {' '.join(argv)}\n")
        try:
            proc = await anyio.open_process(
                list(argv),
                cwd=cwd,
                env=_build_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # one process group: cancel kills make and its gcc's
            )
        except FileNotFoundError:
            raise BuildError(
                f"{argv[0]} not found", code="E_KERNEL_TOOLCHAIN", hint=SETUP_HINT
            ) from None
        async with proc:
            try:
                assert proc.stdout is not None
                pending = b""
                async for chunk in proc.stdout:
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for raw in lines:
                        self._line(raw, on_line)
                if pending:
                    self._line(pending, on_line)
                rc = await proc.wait()
            except BaseException:
                _kill_group(proc.pid)
                raise
        self.build_log.flush()
        if rc != 0:
            raise BuildError(
                f"kernel build step `{' '.join(argv)}` failed with exit {rc}: "
                f"{_summary(self.tail)}",
                code="E_KERNEL_BUILD",
                hint=f"full log: {self.log_path}",
            )

    def _line(self, raw: bytes, on_line: Callable[[str], None] | None) -> None:
        line = raw.decode(errors="replace").rstrip()
        self.build_log.write(line + "\n")
        self.tail.append(line)
        if on_line is not None:
            on_line(line)


def _summary(tail: Sequence[str]) -> str:
    """The line worth showing: the compiler's last error, not make's "*** Error 2"."""
    lines = [line.strip() for line in tail if line.strip()]
    errors = [
        line
        for line in lines
        if _ERROR_LINE.search(line) and not line.startswith(("make:", "make["))
    ]
    return (errors or lines or [""])[-1]


def _kill_group(pgid: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
