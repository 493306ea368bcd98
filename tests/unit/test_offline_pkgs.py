"""The offline package set (issue 14, part 4): ``pkgs.<name>`` as a REAL derivation
made from this machine's Debian packages, built with the real nix-build into a
throwaway store (sandbox = false, as the builder VM builds), and run with an empty
environment: it must need nothing outside its store path (a busybox guest has no
glibc). One set of python3 + curl + jq is built per module and shared."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conformance.seed_texts import BEGINNER_FLAKE_X86

from mvm.engine.base.errors import BuildError
from mvm.engine.builders import offline_pkgs

REPO = Path(__file__).resolve().parents[2]
NAMES = ("curl", "jq", "python3")
_TOOLS = ("nix-build", "nix-instantiate", "patchelf", "debugfs", "mkfs.ext4", "readelf")

needs_tools = pytest.mark.skipif(
    not all(shutil.which(t) for t in _TOOLS),
    reason="needs nix-build, patchelf, e2fsprogs, binutils (./scripts/setup)",
)


def _nix_env(state: Path) -> dict[str, str]:
    return {
        **os.environ,
        "NIX_CONFIG": "build-users-group =\nsandbox = false\nsubstituters =\n",
        "NIX_STORE_DIR": str(state / "store"),
        "NIX_STATE_DIR": str(state / "var"),
        "NIX_LOG_DIR": str(state / "log"),
    }


class Built:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.set = root / "set"
        self.env = _nix_env(root / "n")
        self.out: dict[str, Path] = {}

    def nix(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    b = Built(tmp_path_factory.mktemp("offline-pkgs"))
    manifest = offline_pkgs.package_manifest(NAMES)
    kernel = b.root / "vmlinux"
    kernel.write_bytes(b"\x7fELF fake kernel")
    manifest["kernel"] = str(kernel)
    assert offline_pkgs.write_offline_nixpkgs(b.set, manifest) == b.set
    expr = f"with import {b.set} {{ }}; [ {' '.join(NAMES)} ]"
    proc = b.nix("nix-build", "--no-out-link", "--quiet", "-E", expr)
    assert proc.returncode == 0, proc.stderr[-3000:]
    b.out = dict(zip(NAMES, (Path(p) for p in proc.stdout.split()), strict=True))
    yield b


def test_the_table_and_its_debian_packages() -> None:
    debs = offline_pkgs.debian_packages()
    assert list(debs) == sorted(set(debs))
    for name in ("python3", "curl", "jq", "ripgrep", "git", "nodejs", "redis", "postgresql",
                 "nginx", "bash", "busybox", "sqlite", "socat", "openssl"):  # fmt: skip
        assert name in offline_pkgs.PACKAGE_TABLE, name
    assert offline_pkgs.PACKAGE_TABLE["python311"] == offline_pkgs.PACKAGE_TABLE["python3"]
    assert offline_pkgs.PACKAGE_TABLE["nodejs_20"] == ("nodejs",)
    assert {"python3.11", "libpython3.11-stdlib", "redis-server", "busybox-static"} <= set(debs)
    # scripts/setup installs every one of them, and patchelf for the Nix side.
    setup = (REPO / "scripts" / "setup").read_text()
    found = re.search(r"^APT_PACKAGES=\((.*?)^\)$", setup, re.M | re.S)
    assert found is not None
    lines = (line.split("#", 1)[0] for line in found.group(1).splitlines())
    listed = {word for line in lines for word in line.split()}
    assert set(debs) | {"patchelf"} <= listed, set(debs) - listed


def test_the_manifest_lists_the_installed_files(monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = offline_pkgs.package_manifest(["python3"])
    entry = manifest["packages"]["python3"]
    assert entry["debs"] == list(offline_pkgs.PACKAGE_TABLE["python3"])
    assert set(entry["versions"]) == set(entry["debs"]) and all(entry["versions"].values())
    files = entry["files"]
    assert "/usr/bin/python3.11" in files and "/usr/lib/python3.11/json/__init__.py" in files
    assert all(f.startswith("/") and (os.path.isfile(f) or os.path.islink(f)) for f in files)
    assert not [f for f in files if f.startswith(("/usr/share/doc/", "/usr/share/man/"))]
    assert json.loads(json.dumps(manifest)) == manifest


def test_a_missing_debian_package_is_one_coded_line(monkeypatch: pytest.MonkeyPatch) -> None:
    real = offline_pkgs._dpkg_versions
    monkeypatch.setattr(
        offline_pkgs, "_dpkg_versions",
        lambda debs: {d: v for d, v in real(debs).items() if d not in ("curl", "redis-tools")},
    )  # fmt: skip
    with pytest.raises(BuildError) as err:
        offline_pkgs.package_manifest(["curl", "redis", "jq"])
    assert err.value.code == "E_OFFLINE_PKG_MISSING"
    line = err.value.one_line()
    assert "\n" not in line and "curl, redis-tools" in line and "./scripts/setup" in line
    with pytest.raises(BuildError, match="no Debian package for nodejs_99"):
        offline_pkgs.package_manifest(["nodejs_99"])


@needs_tools
def test_built_packages_run_with_nothing_from_the_host(built: Built) -> None:
    py, curl, jq = built.out["python3"], built.out["curl"], built.out["jq"]
    # Every shared object python maps (stdlib extension modules included) is its own.
    code = (
        "import json, http.server, ssl, sys; print(1); print(sys.prefix); "
        "print('\\n'.join(l.split()[-1] for l in open('/proc/self/maps') if '.so' in l))"
    )
    run = subprocess.run(["env", "-i", f"{py}/bin/python3", "-c", code],
                         capture_output=True, text=True, check=True)  # fmt: skip
    one, prefix, *mapped = run.stdout.splitlines()
    assert one == "1" and prefix == f"{py}/usr"
    assert mapped and all(m.startswith(f"{py}/") for m in mapped), mapped
    version = subprocess.run(["env", "-i", f"{curl}/bin/curl", "--version"],
                             capture_output=True, text=True, check=True)  # fmt: skip
    assert version.stdout.startswith("curl ")
    out = subprocess.run(["env", "-i", f"{jq}/bin/jq", "-c", ".a"], input='{"a": [1]}',
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert out.stdout == "[1]\n"
    for pkg, exe in ((py, "usr/bin/python3.11"), (curl, "usr/bin/curl"), (jq, "usr/bin/jq")):
        elf = subprocess.run(["readelf", "-l", str(pkg / exe)], capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
        assert f"[Requesting program interpreter: {pkg}/lib/ld-linux" in elf, exe
    assert (curl / "lib" / "libcurl.so.4").is_file()


@needs_tools
def test_an_unknown_name_lists_the_known_ones(built: Built) -> None:
    proc = built.nix("nix-instantiate", "--eval", "--store", "dummy://", "-E",
                     f'"${{(import {built.set} {{ }}).redis}}/bin/redis-server"')  # fmt: skip
    assert proc.returncode != 0
    assert ("E_NIXPKGS_UNAVAILABLE: nixpkgs: pkgs.redis is not in the offline package set "
            "(known: curl, jq, python3)") in proc.stderr  # fmt: skip
    # The flake's legacyPackages is the same set.
    flake = built.nix("nix-instantiate", "--eval", "--strict", "--store", "dummy://", "-E",
                      f"((import {built.set}/flake.nix).outputs {{ self = null; }})"
                      ".legacyPackages.x86_64-linux.mvmOfflinePackages")  # fmt: skip
    assert flake.stdout.strip() == '[ "curl" "jq" "python3" ]', flake.stderr


def _debugfs(image: Path, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True,
                          text=True, check=True).stdout  # fmt: skip


@needs_tools
def test_the_beginner_guide_flake_builds_with_the_offline_set(built: Built) -> None:
    """The flake's inputs as the builder VM gives them (`mvm` = this library on the
    offline set, `nixpkgs` = the set's directory): the image builds and its rootfs
    holds python3's whole closure under /nix/store."""
    src = built.root / "hello"
    src.mkdir()
    (src / "flake.nix").write_text(BEGINNER_FLAKE_X86)
    expr = (
        f'let nixpkgs = {built.set}; pkgs = import nixpkgs {{ system = "x86_64-linux"; }};'
        f" mvm = {{ lib.x86_64-linux = import {REPO}/nix/lib {{ inherit pkgs; }}; }};"
        f" in ((import {src}/flake.nix).outputs {{ inherit mvm nixpkgs; }})"
        ".packages.x86_64-linux.default"
    )
    proc = built.nix("nix-build", "--no-out-link", "--quiet", "-E", expr)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = Path(proc.stdout.strip())
    assert (out / "vmlinux").read_bytes() == b"\x7fELF fake kernel"
    rootfs = out / "rootfs.ext4"
    py, curl = built.out["python3"], built.out["curl"]
    store = _debugfs(rootfs, "ls -l /nix/store")
    assert py.name in store and curl.name in store
    for path in ("usr/bin/python3.11", "lib/ld-linux-x86-64.so.2", "lib/libc.so.6",
                 "usr/lib/python3.11/http/server.py"):  # fmt: skip
        stat = _debugfs(rootfs, f"stat /nix/store/{py.name}/{path}")
        assert "Type: regular" in stat, path
    run = _debugfs(rootfs, "cat /etc/mvm/services/hello/run")
    assert f"{py}/bin/python3 -m http.server 8080" in run
    assert "python3" in _debugfs(rootfs, "ls /usr/bin")


@needs_tools
def test_the_guides_server_and_health_check_work_together(built: Built) -> None:
    """The guide's service and its health check, on the host with empty environments:
    python3's http.server serves, curl -sf fetches the page."""
    py, curl = built.out["python3"], built.out["curl"]
    www = built.root / "www"
    www.mkdir()
    (www / "index.html").write_text("<h1>Hello from mvm!</h1>\n")
    argv = ["env", "-i", f"{py}/bin/python3", "-u", "-m", "http.server", "0",
            "--bind", "127.0.0.1", "--directory", str(www)]  # fmt: skip
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as server:
        try:
            assert server.stdout is not None
            ready = server.stdout.readline()  # printed once the socket listens
            port = re.search(r"port (\d+)", ready)
            assert port is not None, ready
            got = subprocess.run(
                ["env", "-i", f"{curl}/bin/curl", "-sf", f"http://localhost:{port.group(1)}/"],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            assert got.returncode == 0 and got.stdout == "<h1>Hello from mvm!</h1>\n", got
        finally:
            server.terminate()


@needs_tools
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git (a git+file: mvm input)")
def test_nix_build_with_the_set_as_the_nixpkgs_input(built: Built) -> None:
    """What the builder VM runs: `nix build --override-input nixpkgs path:<set>` on the
    user's flake (the mvm input is this library, as a git+file: flake with its guest
    sources). The packages are the ones nix-build made: same derivations."""
    src = built.root / "mvm-src"
    shutil.copytree(REPO / "nix", src / "nix")
    shutil.copytree(REPO / "backends" / "guest", src / "backends" / "guest",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    git = ["git", "-C", str(src), "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "mvm"]):
        subprocess.run(git + args, check=True, capture_output=True)
    flake = built.root / "hello-flake"
    flake.mkdir()
    (flake / "flake.nix").write_text(BEGINNER_FLAKE_X86)
    env = {
        **built.env,
        "NIX_CONFIG": built.env["NIX_CONFIG"] + "experimental-features = nix-command flakes\n",
    }
    result = built.root / "result"
    proc = subprocess.run(
        ["nix", "build", "-o", str(result), f"{flake}#packages.x86_64-linux.default",
         "--override-input", "mvm", f"git+file://{src}?dir=nix",
         "--override-input", "mvm/nixpkgs", f"path:{built.set}",
         "--override-input", "nixpkgs", f"path:{built.set}"],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in result.iterdir()) == ["mvm-meta.json", "rootfs.ext4", "vmlinux"]
    assert json.loads((result / "mvm-meta.json").read_text())["name"] == "hello"
    store = _debugfs(result / "rootfs.ext4", "ls -l /nix/store")
    assert built.out["python3"].name in store and built.out["curl"].name in store
