"""The beginner's guide and the Dev Image seed, built for real in the builder VM.

The guide's final ``hello`` flake (verbatim but for ``system = "x86_64-linux"``) needs
``pkgs.python3`` and ``pkgs.curl``: ``mvmctl build --flake .`` boots the persistent
builder VM (Nix inside a microVM, image from Debian's packages) and runs a real ``nix
build`` there with the offline package set as ``nixpkgs``; ``mvmctl up`` then serves the
page and its curl health check reports healthy. The module shares one ``$MVM_HOME`` so
the builder VM and its Nix store stay warm across the tests, as they do for a user.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import _kill_what_the_test_left

from conformance.seed_texts import BEGINNER_FLAKE_X86, DEV_IMAGE_FLAKE

pytestmark = pytest.mark.qemu

BEGINNERS = "nix-beginners-guide.txt"
DEV = "dev-image.txt"
BUILDER = "builder-vm.txt"

HELLO = BEGINNER_FLAKE_X86

DEV_FLAKE = DEV_IMAGE_FLAKE
RUN = uuid.uuid4().hex[:8]
DEV_TOML = """flake = "."
profile = "dev"
vcpus = 2
memory_mib = 1024
"""


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mvmb-", dir="/tmp"))
    yield path
    subprocess.run([sys.executable, "-m", "mvm.cli", "persistent-builder", "stop"],
                   env=_env(path), capture_output=True, timeout=120, check=False)  # fmt: skip
    _kill_what_the_test_left(path)


def _env(home: Path) -> dict[str, str]:
    import os

    return {**os.environ, "MVM_HOME": str(home)}


def mvmctl(
    line: str, cwd: Path, home: Path, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    argv = shlex.split(line, comments=True)
    assert argv[0] == "mvmctl"
    return subprocess.run(
        [sys.executable, "-m", "mvm.cli", *argv[1:]], cwd=cwd, env=_env(home),
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def refused(result: subprocess.CompletedProcess[str], code: str) -> str:
    assert result.returncode != 0
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error[")]
    assert len(errors) == 1 and errors[0].startswith(f"error[{code}]"), result.stderr[-3000:]
    assert not any("Traceback" in ln or "[warning" in ln for ln in result.stderr.splitlines())
    return errors[0]


def _fetch(port: int, deadline_s: float = 90) -> str:
    end = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                return r.read().decode()
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.5)


def _row(home: Path, cwd: Path, name: str) -> dict[str, object] | None:
    rows = json.loads(ok(mvmctl("mvmctl ls --json", cwd, home)).stdout)
    return next((r for r in rows if r["name"] == name), None)


def _builder_work_dirs(home: Path, cwd: Path) -> str:
    return ok(mvmctl("mvmctl exec mvm-builder -- ls -A /nix/var/mvm/jobs", cwd, home)).stdout


@pytest.mark.seed(BEGINNERS, "mvmctl build --flake . / up -p 8080:8080 / logs / forward / down")
def test_the_guides_hello_flake_builds_in_the_builder_vm_and_serves(
    tmp_path: Path, home: Path, seed_outcome
) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "hello"
    root.mkdir()
    # the artifact cache is shared by every run on this machine: a page of its own
    # makes this run's first build a real one
    (root / "flake.nix").write_text(HELLO.replace("Hello from mvm!", f"Hello from mvm! {RUN}"))
    built = ok(mvmctl("mvmctl build --flake .", root, home))
    assert "use  vm: the persistent builder VM mvm-builder" in built.stderr
    assert "nixpkgs: the offline package set" in built.stderr
    assert "building '" in built.stderr  # nix's own log, streamed
    image = Path(built.stdout.strip())
    meta = json.loads((image / "mvm-meta.json").read_text())
    assert meta["name"] == "hello" and meta["health_checks"] == ["hello"]
    assert (image / "rootfs.ext4").stat().st_size > 10 << 20
    assert _builder_work_dirs(home, root).split() == []  # the job's folder went

    ok(mvmctl("mvmctl up --flake . --cpus 2 --memory 1024 -p 8080:8080", root, home))
    try:
        assert "Hello from mvm!" in _fetch(8080)
        end = time.monotonic() + 60
        while (_row(home, root, "hello") or {}).get("health") != {"hello": "healthy"}:
            assert time.monotonic() < end, _row(home, root, "hello")
            time.sleep(1)
        logs = ok(mvmctl("mvmctl logs hello", root, home)).stdout
        assert '"GET / HTTP/1.1" 200' in logs
        forward = subprocess.Popen(
            [sys.executable, "-m", "mvm.cli", "forward", "hello", "-p", "9090:8080"],
            env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            assert "Hello from mvm!" in _fetch(9090, 60)
        finally:
            forward.terminate()
            forward.wait(30)
    finally:
        ok(mvmctl("mvmctl down hello", root, home))
    assert _row(home, root, "hello") is None
    seed_outcome.works("nix build in the builder VM; serves Hello from mvm!, health healthy")


@pytest.mark.seed(BUILDER, "mvmctl build --flake . again (a cache hit boots no builder)")
def test_a_cache_hit_boots_no_builder(tmp_path: Path, home: Path, seed_outcome) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "hello"
    root.mkdir()
    (root / "flake.nix").write_text(HELLO.replace("Hello from mvm!", f"Hello from mvm! {RUN}"))
    ok(mvmctl("mvmctl persistent-builder stop", root, home))
    assert _row(home, root, "mvm-builder") is None
    hit = ok(mvmctl("mvmctl build --flake .", root, home))
    assert "cache hit" in hit.stderr and _row(home, root, "mvm-builder") is None
    # a changed input rebuilding is the cache key's job (unit/test_build_cache.py) and what
    # `mvmctl bench build` times ("warm"): one more TCG build here would cost a minute
    seed_outcome.works("an unchanged flake is a cache hit that boots no builder VM")


@pytest.mark.seed(BUILDER, "troubleshooting: the phase named in the error")
def test_bad_inputs_are_one_coded_line_naming_the_phase(
    tmp_path: Path, home: Path, seed_outcome
) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "bad"
    root.mkdir()
    (root / "flake.nix").write_text(HELLO)
    line = refused(mvmctl("mvmctl build --flake . --profile nope", root, home), "E_BUILD_ATTR")
    assert "nix evaluation" in line and "packages.x86_64-linux.nope" in line
    (root / "flake.nix").write_text(HELLO.replace("pkgs.curl ]", "pkgs.curl pkgs.htop ]"))
    line = refused(mvmctl("mvmctl build --flake .", root, home), "E_NIXPKGS_UNAVAILABLE")
    assert "pkgs.htop is not in the offline package set (known:" in line and "python3" in line
    (root / "flake.nix").write_text(HELLO.replace("pkgs.curl ]", "pkgs.curl pkgz.jq ]"))
    line = refused(mvmctl("mvmctl build --flake .", root, home), "E_BUILD_EVAL")
    assert "nix evaluation" in line and "pkgz" in line
    assert _builder_work_dirs(home, root).split() == []
    seed_outcome.refused("E_BUILD_ATTR", "each bad input is one coded line naming its phase")


@pytest.mark.seed(DEV, "dev output (git, jq, ripgrep, python3): build --profile dev, dev up")
def test_the_dev_image_builds_in_the_builder_vm_and_has_its_tools(
    tmp_path: Path, home: Path, seed_outcome
) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "my-app"
    root.mkdir()
    (root / "flake.nix").write_text(DEV_FLAKE)
    (root / "mvm.toml").write_text(DEV_TOML)
    built = ok(mvmctl("mvmctl build --flake . --profile dev", root, home))
    meta = json.loads((Path(built.stdout.strip()) / "mvm-meta.json").read_text())
    assert meta["name"] == "my-app-dev" and meta["accessible"] is True
    ok(mvmctl("mvmctl dev up --no-shell", root, home))
    try:
        probe = "echo $BASH_VERSION; git --version; jq --version; rg --version; python3 -V"
        out = ok(mvmctl(f"mvmctl exec my-app-dev -- /bin/bash -c '{probe}'", root, home)).stdout
        lines = out.splitlines()
        assert lines[0].startswith("5.") and lines[1].startswith("git version")
        assert lines[2].startswith("jq-") and lines[3].startswith("ripgrep")
        assert lines[-1].startswith("Python 3")
    finally:
        ok(mvmctl("mvmctl dev down", root, home))
    seed_outcome.works("builds in the builder VM; bash, git, jq, rg, python3 in the dev VM")


@pytest.mark.seed(BUILDER, "mvmctl build --no-persistent-builder, Ctrl-C mid-build")
def test_ctrl_c_mid_build_leaves_no_vm_no_staging_and_no_job(
    tmp_path: Path, home: Path, seed_outcome
) -> None:  # type: ignore[no-untyped-def]
    import signal

    from mvm.engine.base.settings import current_settings

    root = tmp_path / "hello"
    root.mkdir()
    (root / "flake.nix").write_text(HELLO.replace("Hello from mvm!", f"Interrupted {RUN}"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mvm.cli", "build", "--flake", ".", "--no-persistent-builder"],
        cwd=root, env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # the moment is an event: nix has started building
        seen.append(line)
        if line.startswith("| building '"):
            break
    proc.send_signal(signal.SIGINT)
    _out, rest = proc.communicate(timeout=180)
    assert proc.returncode == 130, "".join(seen) + rest
    assert "Traceback" not in rest and "interrupted" in rest
    one_shots = [r for r in json.loads(ok(mvmctl("mvmctl ls --json", root, home)).stdout)
                 if str(r["name"]).startswith("mvm-builder-")]  # fmt: skip
    assert one_shots == []
    assert not (home / "volumes").exists() or not [
        p for p in (home / "volumes").iterdir() if p.name.startswith("mvm-builder-")
    ]
    cache = current_settings().cache
    assert not list((cache / "builds").glob(".staging*")) and not list(
        (cache / "builder-vm").glob("*/.staging-*")
    )
    seed_outcome.works(
        "Ctrl-C mid nix build: exit 130, the one-shot VM, its volume and staging gone"
    )
