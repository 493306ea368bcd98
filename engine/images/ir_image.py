"""Workload IR -> ImageSpec for the offline builder (hosts without Nix).

The IR's one app becomes one image, laid out as the seed's "What ends up in the
rootfs" (workload-ir-to-image) so the agent and the wrapper see the same files a
Nix-built function workload has (nix/lib/factories/mkFunctionService.nix):

* ``/etc/mvm/entrypoint``: ``exec /usr/lib/mvm/wrappers/runner`` (what /init runs
  at boot: the wrapper imports the function once, then becomes ``sleep``; the
  agent's ``run`` execs it per call with ``MVM_RUN_MODE``);
* ``/usr/lib/mvm/wrappers/runner``: the Python wrapper (backends/guest/wrapper.py)
  behind a two-line sh header naming the interpreter; variant ``oneshot`` without
  a concurrency block in the IR's entrypoint, ``longrunning`` with one;
* ``/etc/mvm/wrapper.json`` = {module, function, format, working_dir, mode};
* ``/etc/mvm/runtime.json`` = {language, module, function, format, source_path,
  concurrency? (verbatim)};
* the app's files (``source.local_path``, selected by its include/exclude globs, or
  ``app_root``) under ``working_dir``
  (default ``/app``);
* the host's CPython (Debian 12: ``/usr/bin/python3.11``) with its shared-library
  closure at the same guest paths, and the standard library as
  ``/usr/lib/python311.zip`` holding only *compiled* modules, so the guest never
  compiles a module at start-up.

``resources`` map to vcpus/memory; mounts and network ports are not supported by
the offline builder and are ignored with a warning. msgpack needs a msgpack
implementation in the image, which the stdlib-only guest has none of: refused
(E_IR_FORMAT) at build time.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import uuid
import zipfile
from functools import cache
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

import anyio
import attrs

from mvm.engine.base.errors import BuildError, ConfigError
from mvm.engine.base.log import get_logger
from mvm.engine.base.paths import cache_dir
from mvm.engine.images.imagespec import ImageSpec
from mvm.engine.images.invoke_schema import SCHEMAS_FILE
from mvm.engine.ir import (
    CommandEntrypoint,
    FunctionEntrypoint,
    LocalPath,
    NixPackages,
    Workload,
    validate_text,
)

log = get_logger("mvm.ir_image")

DEFAULT_WORKING_DIR = "/app"
RUNNER_GUEST = "/usr/lib/mvm/wrappers/runner"
CONCURRENCY_EXTENSION = "mvm.concurrency"  # legacy: before entrypoint.concurrency existed
ZIP_RECIPE = "1"
MAX_APP_FILES = 2000
MAX_APP_BYTES = 64 * 1024 * 1024
# Stdlib packages a function server does not need: tests, GUIs, build and packaging tools.
_SKIP_STDLIB = frozenset(
    {
        "test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3",
        "distutils", "pydoc_data", "site-packages", "dist-packages", "lib-dynload",
        "venv", "config-3.11-x86_64-linux-gnu", "__phello__",
    }
)  # fmt: skip
_SKIP_DYNLOAD = re.compile(
    r"^(_test|_?xx|_ctypes_test|_curses|readline|nis|ossaudiodev|_dbm|_crypt|audioop)"
)
_SKIP_APP_DIRS = frozenset({"__pycache__", ".venv", "venv", "node_modules", ".git"})
_FIXED_ZIP_TIME = (2024, 1, 1, 0, 0, 0)
SYSTEM_PATH = "/usr/bin:/bin:/usr/local/bin"


@attrs.frozen
class PythonRuntime:
    """The host interpreter's files as they will appear in the guest."""

    executable: str  # e.g. /usr/bin/python3.11 (same path in the guest)
    version: str  # "3.11"
    zip_host: Path  # the built stdlib zip on the host
    files: tuple[str, ...]  # interpreter, loader, libraries, extension modules

    @property
    def zip_guest(self) -> str:
        return f"/usr/lib/python{self.version.replace('.', '')}.zip"


# ------------------------------------------------------------------------- python runtime


def _interpreter() -> tuple[str, str, str, Path, Path]:
    """(executable, X.Y, cache tag, stdlib dir, lib-dynload dir) of the host's python3.

    The system interpreter, not the one running mvm (that may be a venv or pyenv
    build): the guest gets exactly the files a distribution python is made of."""
    exe = shutil.which("python3", path=SYSTEM_PATH)
    if exe is None:
        raise BuildError(
            "no python3 on this host to copy into the guest",
            code="E_PYTHON_RUNTIME",
            hint="apt-get install python3",
        )
    probe = (
        "import json, sys, sysconfig; print(json.dumps([sys.executable, "
        "'%d.%d' % sys.version_info[:2], sys.implementation.cache_tag, "
        "sysconfig.get_path('stdlib'), sysconfig.get_path('platstdlib')]))"
    )
    try:
        out = subprocess.run([exe, "-I", "-c", probe], capture_output=True, text=True, check=True)
        real, version, tag, stdlib, _ = json.loads(out.stdout)
    except (OSError, subprocess.CalledProcessError, ValueError) as exc:
        raise BuildError(f"cannot inspect {exe}: {exc}", code="E_PYTHON_RUNTIME") from None
    real = os.path.realpath(real)
    lib = Path(stdlib)
    if not (lib / "os.py").is_file():
        raise BuildError(f"no Python standard library at {lib}", code="E_PYTHON_RUNTIME")
    return real, version, tag, lib, lib / "lib-dynload"


def shared_library_closure(paths: list[str]) -> set[str]:
    """Shared libraries (and the loader) the given ELF files need."""
    try:
        out = subprocess.run(["ldd", *paths], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise BuildError("ldd not found", code="E_PYTHON_RUNTIME") from None
    libs: set[str] = set()
    for line in out.stdout.splitlines():
        parts = line.split()
        if line.endswith(":"):  # the per-file header when ldd gets several files
            continue
        if "=>" in parts:
            target = parts[parts.index("=>") + 1]
            if target.startswith("/"):
                libs.add(target)
        elif parts and parts[0].startswith("/"):
            libs.add(parts[0])  # the loader: /lib64/ld-linux-x86-64.so.2
    return libs


def _stdlib_entries(stdlib: Path, tag: str) -> list[tuple[str, Path]]:
    """(name in the zip, host .pyc or .py) for every module we ship, sorted."""
    entries: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(stdlib):
        base = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_STDLIB and d != "__pycache__")
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            rel = (base / name).relative_to(stdlib)
            pyc = base / "__pycache__" / f"{name[:-3]}.{tag}.pyc"
            if pyc.is_file():
                entries.append((str(rel.with_suffix(".pyc")), pyc))
            else:  # zipimport compiles it in memory: slower, but correct for any version
                entries.append((str(rel), base / name))
    return entries


def _write_zip(target: Path, entries: list[tuple[str, Path]]) -> None:
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, source in entries:
            info = zipfile.ZipInfo(name, _FIXED_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, source.read_bytes())
    os.replace(tmp, target)


@cache
def python_runtime(cache: Path | None = None) -> PythonRuntime:
    """The host python as guest files; the stdlib zip is built once and cached by content."""
    exe, version, tag, stdlib, dynload = _interpreter()
    entries = _stdlib_entries(stdlib, tag)
    h = hashlib.sha256(f"mvm-pyzip {ZIP_RECIPE} {exe} {tag}".encode())
    for name, source in entries:
        st = source.stat()
        h.update(f"{name} {st.st_size} {st.st_mtime_ns}\n".encode())
    key = h.hexdigest()[:32]
    target = (cache or cache_dir()) / "python" / key / f"python{version.replace('.', '')}.zip"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_zip(target, entries)
        log.info("python.zip_built", path=str(target), modules=len(entries))
    modules = sorted(
        str(p) for p in dynload.glob("*.so") if not _SKIP_DYNLOAD.match(p.name)
    ) if dynload.is_dir() else []  # fmt: skip
    libs = shared_library_closure([exe, *modules])
    return PythonRuntime(
        executable=exe,
        version=version,
        zip_host=target,
        files=tuple(sorted({exe, *modules, *libs})),
    )


# ------------------------------------------------------------------------- IR -> spec


def _pick_function(workload: Workload) -> tuple[str, FunctionEntrypoint | CommandEntrypoint]:
    if len(workload.apps) != 1:
        raise ConfigError(
            f"the offline builder builds one app per image (got {len(workload.apps)})",
            code="E_IR_APPS",
        )
    app = workload.apps[0]
    fns = [e for e in app.entrypoints if isinstance(e, FunctionEntrypoint)]
    primary = [e for e in fns if e.primary]
    if len(primary) == 1:
        return app.name, primary[0]
    if len(fns) == 1:
        return app.name, fns[0]
    if fns:
        raise ConfigError(
            f"app {app.name!r} has {len(fns)} function entrypoints; mark exactly one primary",
            code="E_IR_ENTRYPOINT",
        )
    return app.name, app.entrypoints[0]


def concurrency_block(workload: Workload, entry: FunctionEntrypoint) -> dict[str, Any] | None:
    """The entrypoint's ADR-0011 block, verbatim (None: oneshot)."""
    block = entry.concurrency
    if block is None and CONCURRENCY_EXTENSION in workload.extensions:
        concurrency(workload)  # checks the legacy extension's shape
        block = workload.extensions[CONCURRENCY_EXTENSION]
    return dict(block) if isinstance(block, dict) else None


def concurrency(workload: Workload) -> int:
    """Warm-pool size: ``warm`` of the primary entrypoint's concurrency block, or of
    the legacy extension ``"mvm.concurrency"`` (0: no pool)."""
    fns = [e for a in workload.apps for e in a.entrypoints if isinstance(e, FunctionEntrypoint)]
    blocks = [e.concurrency for e in fns]
    block = next((b for b in blocks if b is not None), None)
    if block is None:
        block = workload.extensions.get(CONCURRENCY_EXTENSION)
    if block is None:
        return 0
    warm = block.get("warm", 0) if isinstance(block, dict) else None
    if not isinstance(warm, int) or isinstance(warm, bool) or not 0 <= warm <= 64:
        raise ConfigError(
            'the concurrency block must be {"warm": 0..64, ...}', code="E_IR_CONCURRENCY"
        )
    return warm


def source_selects(rel: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    """Whether ``local_path``'s globs keep the file at ``rel`` (posix, relative to the
    source dir): it matches an include pattern and neither it nor a directory above it
    matches an exclude pattern. ``*`` also matches ``/`` (so ``**`` is everything and
    ``*.py`` any .py at any depth)."""
    if not any(fnmatch.fnmatchcase(rel, pat) for pat in include):
        return False
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return not any(fnmatch.fnmatchcase(p, pat) for p in prefixes for pat in exclude)


def _app_files(
    root: Path,
    working_dir: str,
    include: tuple[str, ...] = ("**",),
    exclude: tuple[str, ...] = (),
) -> dict[str, str]:
    """Guest path under working_dir -> host path, for every regular file of the source
    that the source's include/exclude globs select."""
    if not root.is_dir():
        raise ConfigError(f"app source {root} is not a directory", code="E_IR_SOURCE")
    files: dict[str, str] = {}
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in _SKIP_APP_DIRS and not d.startswith(".")
        )
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.startswith(".") or path.is_symlink() or not path.is_file():
                continue
            rel = path.relative_to(root).as_posix()
            if not source_selects(rel, include, exclude):
                continue
            total += path.stat().st_size
            if len(files) >= MAX_APP_FILES or total > MAX_APP_BYTES:
                raise ConfigError(
                    f"app source {root} is too big for the offline builder "
                    f"(limits: {MAX_APP_FILES} files, {MAX_APP_BYTES >> 20} MiB)",
                    code="E_IR_SOURCE",
                )
            files[str(PurePosixPath(working_dir) / rel)] = str(path)
    return files


def wrapper_source() -> str:
    """The guest wrapper's text, from the installed package (wheel or checkout)."""
    return resources.files("mvm.backends.guest").joinpath("wrapper.py").read_text("utf-8")


def runner_text(python: str, variant: str, env: dict[str, str]) -> str:
    """The wrapper behind an sh/Python polyglot header: sh runs line 2 (exec the
    interpreter on this file), Python sees a string literal and goes on."""
    assigns = " ".join(shlex.quote(f"{k}={v}") for k, v in sorted(env.items()))
    line = f'exec /bin/env {assigns} {python} -s "$0" --variant {variant} "$@"'
    if "'''" in line or "\n" in line:
        raise ConfigError("app env values must not contain newlines or '''", code="E_IR_ENV")
    # The header string is the module's docstring now, so the wrapper's
    # `from __future__` (legal only first) goes: 3.10+ evaluates its annotations fine.
    body = wrapper_source().replace("from __future__ import annotations\n", "", 1)
    return f"#!/bin/sh\n''''{line} #'''\n" + body


def _host_runner(text: str) -> Path:
    """The runner as an executable host file (host_files keep the exec bit)."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:32]
    target = cache_dir() / "runners" / digest / "runner"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".runner.{uuid.uuid4().hex[:8]}")
        tmp.write_text(text)
        tmp.chmod(0o755)
        os.replace(tmp, target)
    return target


def function_files(workload: Workload, entry: FunctionEntrypoint, *, dev: bool) -> dict[str, str]:
    """/etc/mvm/wrapper.json and runtime.json, exactly the seed's keys."""
    working_dir = entry.working_dir or DEFAULT_WORKING_DIR
    wrapper = {
        "module": entry.module,
        "function": entry.function,
        "format": entry.format,
        "working_dir": working_dir,
        "mode": "dev" if dev else "prod",
    }
    runtime: dict[str, Any] = {
        "language": entry.language,
        "module": entry.module,
        "function": entry.function,
        "format": entry.format,
        "source_path": working_dir,
    }
    block = concurrency_block(workload, entry)
    if block is not None:
        runtime["concurrency"] = block
    files = {
        "wrapper.json": json.dumps(wrapper, indent=2) + "\n",
        "runtime.json": json.dumps(runtime, indent=2) + "\n",
    }
    if entry.args_schema is not None or entry.return_schema is not None:
        schemas = {"args_schema": entry.args_schema, "return_schema": entry.return_schema}
        files[SCHEMAS_FILE] = json.dumps(schemas, indent=2, sort_keys=True) + "\n"
    return files


def workload_image_spec(
    workload: Workload,
    *,
    base_dir: Path,
    dev: bool = False,
    runtime: PythonRuntime | None = None,
    app_root: Path | None = None,
) -> ImageSpec:
    """The ImageSpec of a validated workload (blocking: may build the stdlib zip).
    ``app_root`` (mkFunctionWorkload's appPkg) replaces the IR's local_path source."""
    name, entry = _pick_function(workload)
    app = workload.apps[0]
    if app.mounts:
        log.warning("ir_image.mounts_ignored", app=name, mounts=len(app.mounts))
    if app.network is not None and app.network.ports:
        log.warning("ir_image.ports_ignored", app=name, ports=list(app.network.ports))
    if not isinstance(app.image, NixPackages):
        raise ConfigError(
            f"app {name!r}: the offline builder supports nix_packages images only",
            code="E_IR_IMAGE",
        )
    common = {"name": name, "dev": dev, "vcpus": app.resources.vcpus}
    common["memory_mib"] = app.resources.memory_mb
    if isinstance(entry, CommandEntrypoint):
        return ImageSpec(command=entry.command, **common)  # type: ignore[arg-type]
    if entry.language != "python":
        raise ConfigError(
            f"function language {entry.language!r}: the offline builder supports python only",
            code="E_IR_LANGUAGE",
            hint="build with Nix (nix/lib) for other languages",
        )
    if entry.format != "json":
        raise ConfigError(
            f"function format {entry.format!r}: the guest's python has no msgpack "
            "implementation (stdlib only), so the wrapper cannot decode it",
            code="E_IR_FORMAT",
            hint='use format="json"',
        )
    if app_root is None:
        if not isinstance(app.source, LocalPath):
            raise ConfigError(
                f"app {name!r}: the offline builder needs a local_path source", code="E_IR_SOURCE"
            )
        app_root = base_dir / app.source.path
        globs = (app.source.include, app.source.exclude)
    else:
        globs = (("**",), ())  # mkFunctionWorkload's appPkg: the whole directory
    extra = [p for p in app.image.packages if p not in ("python3", "python311", "python3Minimal")]
    if extra:
        log.warning("ir_image.packages_ignored", app=name, packages=extra)
    rt = runtime or python_runtime()
    env = {"PYTHONHOME": "/usr", "PYTHONDONTWRITEBYTECODE": "1", **app.env}
    variant = "longrunning" if concurrency_block(workload, entry) is not None else "oneshot"
    runner = _host_runner(runner_text(rt.executable, variant, env))
    working_dir = entry.working_dir or DEFAULT_WORKING_DIR
    host_files = {
        rt.zip_guest: str(rt.zip_host),
        RUNNER_GUEST: str(runner),
        **_app_files(app_root, working_dir, *globs),
    }
    return ImageSpec(
        command=(RUNNER_GUEST,),
        packages=rt.files,
        host_files=host_files,
        mvm_files=function_files(workload, entry, dev=dev),
        **common,  # type: ignore[arg-type]
    )


def is_ir_file(path: Path) -> bool:
    """A .json file that is Workload IR (has schema_version and apps), not an ImageSpec."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "schema_version" in data and "apps" in data


async def load_ir_spec(path: Path, *, dev: bool = False) -> ImageSpec:
    """Read, validate and map an IR file (paths resolve against its directory)."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"IR file {path} does not exist", code="E_IR_MISSING") from None
    base = path.resolve().parent
    workload = validate_text(text, base_dir=base)
    spec: ImageSpec = await anyio.to_thread.run_sync(
        lambda: workload_image_spec(workload, base_dir=base, dev=dev)
    )
    return spec


def describe(spec: ImageSpec) -> dict[str, Any]:
    """What an IR image will contain, for logs and `mvmctl build --explain`-style output."""
    return {
        "name": spec.name,
        "packages": len(spec.packages),
        "host_files": len(spec.host_files),
        "mvm_files": sorted(spec.mvm_files),
    }
