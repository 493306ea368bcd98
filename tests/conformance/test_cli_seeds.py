"""The seeds' ``mvmctl`` command lines, verbatim (split with shlex), run for real.

Each test writes the seed's project (or the smallest busybox-only flake the offline
builder can build, where the seed's own flake needs nixpkgs) into a temporary folder,
runs the seed's command lines there as a user would, and checks what they did: the
image was built, the VM booted under QEMU and answers, or the exact coded refusal
that names what this host lacks. Boots are few and shared between checks (TCG).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.seed_texts import MY_APP_FLAKE, MY_APP_TOML
from mvm.backends import nix_meta

pytestmark = pytest.mark.skipif(not nix_meta.nix_available(), reason="needs nix-instantiate")

BUILDING = "building-microvm-images.txt"
BUILDER = "builder-vm.txt"
DEV = "dev-image.txt"
BEGINNERS = "nix-beginners-guide.txt"
# the Builder VM seed's safe reason codes (dev status / dev cache inspect)
REASONS = {
    "hit", "missing_artifact", "missing_fingerprint", "fingerprint_mismatch",
    "missing_artifact_digest_manifest", "artifact_digest_mismatch", "missing_provenance",
    "provenance_mismatch",
}  # fmt: skip


# A busybox-only "hello" flake (the beginners' guide's own needs pkgs.python3).
HELLO_FLAKE = """{
  inputs = { mvm.url = "github:auser/mvm?dir=nix"; };
  outputs = { mvm, ... }: {
    packages.x86_64-linux.default = mvm.lib.x86_64-linux.mkGuest {
      name = "hello";
      entrypoint.command = [ "/bin/httpd" "-f" "-p" "8080" "-h" "/etc" ];
    };
  };
}
"""
PKGS_FLAKE = """{
  inputs = {
mvm.url = "github:auser/mvm?dir=nix";
nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";
};
  outputs = { mvm, nixpkgs, ... }:
  let
  system = "x86_64-linux";
  pkgs = import nixpkgs { inherit system; };
  in {
  packages.${system}.default = mvm.lib.${system}.mkGuest {
  name = "hello";
  packages = [ pkgs.python3 pkgs.curl ];
  };
  };
}
"""


def mvmctl(line: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a seed command line (``mvmctl ...``) in ``cwd`` with the installed mvmctl."""
    # a shell joins "\\<newline>" continuations; the seeds annotate lines with "# ..."
    argv = shlex.split(line.replace("\\\n", " "), comments=True)
    assert argv[0] == "mvmctl"
    return subprocess.run(
        [sys.executable, "-m", "mvm.cli", *argv[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr
    return result


def refused(result: subprocess.CompletedProcess[str], code: str) -> str:
    assert result.returncode != 0
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error[")]
    assert len(lines) == 1 and lines[0].startswith(f"error[{code}]"), result.stderr
    return lines[0]


def project(tmp_path: Path, flake: str, toml: str | None = None) -> Path:
    root = tmp_path / "my-app"
    root.mkdir()
    (root / "flake.nix").write_text(flake)
    if toml is not None:
        (root / "mvm.toml").write_text(toml)
    return root


@pytest.mark.seed(BUILDING, "mvmctl build / mvmctl run / status (start mode)")
def test_build_then_run_from_the_project_dir(tmp_path: Path, seed_outcome) -> None:  # type: ignore[no-untyped-def]
    root = project(tmp_path, MY_APP_FLAKE, MY_APP_TOML)
    built = ok(mvmctl("mvmctl build # reads mvm.toml; builds the named flake target", root))
    image = Path(built.stdout.strip().splitlines()[-1])
    assert json.loads((image / "mvm-meta.json").read_text())["name"] == "my-app"
    assert "builder:" in built.stderr  # which builder, and why
    run = ok(mvmctl("mvmctl run # builds (if needed) + boots", root))
    try:
        assert "my-app: up in" in run.stderr and "detached" in run.stderr  # default: detached
        status = ok(mvmctl("mvmctl status my-app", root))
        assert "start mode: detached" in status.stdout
        assert (
            json.loads(ok(mvmctl("mvmctl status my-app --json", root)).stdout)["start_mode"]
            == "detached"
        )
    finally:
        ok(mvmctl("mvmctl down my-app", root))
    seed_outcome.works("build reads mvm.toml and builds my-app offline; run boots it detached")


@pytest.mark.seed(
    BEGINNERS, "mvmctl up --flake . --cpus 2 --memory 1024 -p 8080:8080; ls; logs; down"
)
def test_up_flake_with_resources_and_a_port(tmp_path: Path, seed_outcome) -> None:  # type: ignore[no-untyped-def]
    import urllib.request

    root = project(tmp_path, HELLO_FLAKE)
    ok(mvmctl("mvmctl build --flake .", root))
    ok(mvmctl("mvmctl up --flake . --cpus 2 --memory 1024 -p 8080:8080", root))
    try:
        (row,) = json.loads(ok(mvmctl("mvmctl ls --json", root)).stdout)
        assert row["name"] == "hello" and row["state"] == "running"
        assert row["ports"] == ["127.0.0.1:8080->8080"]
        with urllib.request.urlopen("http://127.0.0.1:8080/mvm/name", timeout=30) as reply:
            assert reply.read().strip() == b"hello"
        app = ok(mvmctl("mvmctl logs hello", root)).stdout  # httpd -f writes nothing
        assert "mvm-init" not in app and "Linux version" not in app, app
        assert "mvm-init" in ok(mvmctl("mvmctl logs hello --all", root)).stdout
    finally:
        ok(mvmctl("mvmctl down hello", root))
    seed_outcome.works("builds hello offline, boots it with 2 vCPU/1024 MiB, serves :8080")


@pytest.mark.seed(
    DEV, "mvmctl dev up (no project) / dev status / dev cache inspect / console / dev down"
)
def test_dev_up_with_no_project_boots_the_default_dev_image(tmp_path: Path, seed_outcome) -> None:  # type: ignore[no-untyped-def]
    up = ok(
        mvmctl(
            "mvmctl dev up # builds the .dev output, boots it, drops you into the shell", tmp_path
        )
    )
    try:
        assert "default dev image" in up.stderr and "mvmctl console mvm-dev" in up.stderr
        status = ok(mvmctl("mvmctl dev status", tmp_path)).stdout
        assert "mvm-dev (running)" in status
        reason = status.split("reason=", 1)[1].split()[0]
        assert reason in REASONS, status
        inspect = json.loads(ok(mvmctl("mvmctl dev cache inspect --json", tmp_path)).stdout)
        assert sorted(inspect) == ["arch", "dev_image", "kind", "ready", "reason"]  # labels only
        assert inspect["kind"] == "builder-vm" and inspect["dev_image"] == "present"
        assert inspect["reason"] in REASONS and inspect["ready"] == (inspect["reason"] == "hit")
        shell = subprocess.run(
            [sys.executable, "-m", "mvm.cli", *shlex.split("mvmctl console")[1:]],
            input="echo from-the-dev-shell\nexit 7\n",
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert "from-the-dev-shell" in shell.stdout and shell.returncode == 7, shell.stderr
    finally:
        ok(mvmctl("mvmctl dev down # stop the dev VM", tmp_path))
    seed_outcome.works("boots demo-dev (busybox shell); console with no name reattaches")


@pytest.mark.seed(BUILDER, "mvmctl persistent-builder start/status/submit/stop")
def test_persistent_builder(tmp_path: Path, seed_outcome) -> None:  # type: ignore[no-untyped-def]
    root = project(tmp_path, HELLO_FLAKE)
    ok(mvmctl("mvmctl persistent-builder start --workspace .", root))
    try:
        status = json.loads(ok(mvmctl("mvmctl persistent-builder status", root)).stdout)
        assert status["workspace"] == str(root) and status["builds"] == []
        line = refused(
            mvmctl(
                "mvmctl persistent-builder submit --flake path:/work --attr "
                "packages.aarch64-linux.default",
                root,
            ),
            "E_FLAKE_SYSTEM",
        )
        assert "aarch64-linux" in line and "x86_64-linux" in line
        built = ok(
            mvmctl(
                "mvmctl persistent-builder submit --flake path:/work --attr "
                "packages.x86_64-linux.default",
                root,
            )
        )
        assert (Path(built.stdout.strip()) / "rootfs.ext4").is_file()
    finally:
        ok(mvmctl("mvmctl persistent-builder stop", root))
    seed_outcome.refused("E_FLAKE_SYSTEM", "no aarch64-linux builder on this x86_64 host")


@pytest.mark.seed(BUILDING, "mvmctl up --flake . --hypervisor apple-container")
def test_hypervisor_apple_container_needs_macos(tmp_path: Path, seed_outcome) -> None:  # type: ignore[no-untyped-def]
    root = project(tmp_path, MY_APP_FLAKE, MY_APP_TOML)
    line = refused(
        mvmctl("mvmctl up --flake . --hypervisor apple-container", root),
        "E_HYPERVISOR_UNAVAILABLE",
    )
    assert "macOS" in line
    seed_outcome.refused("E_HYPERVISOR_UNAVAILABLE", "Apple Virtualization needs macOS")


@pytest.mark.seed(BUILDING, "mvmctl up --flake . --hypervisor firecracker")
def test_hypervisor_firecracker_needs_kvm(tmp_path: Path, seed_outcome) -> None:  # type: ignore[no-untyped-def]
    from mvm.backends.firecracker.backend import guests_run_under_kvm

    if guests_run_under_kvm():
        pytest.skip("this host's KVM runs guests")
    root = project(tmp_path, MY_APP_FLAKE, MY_APP_TOML)
    line = refused(
        mvmctl("mvmctl up --flake . --hypervisor firecracker", root), "E_HYPERVISOR_UNAVAILABLE"
    )
    assert "KVM" in line
    seed_outcome.refused("E_HYPERVISOR_UNAVAILABLE", "firecracker needs KVM that runs guests")


@pytest.mark.seed(BEGINNERS, "mvmctl validate (packages = [ pkgs.python3 pkgs.curl ])")
def test_validate_evaluates_a_flake_with_nixpkgs_packages(tmp_path: Path, seed_outcome) -> None:  # type: ignore[no-untyped-def]
    """``validate`` evaluates with the offline package set the builder VM builds with, so
    it accepts what ``build`` builds (test_builder_vm_seeds.py) and refuses what the set
    lacks, naming the packages it has."""
    root = project(tmp_path, PKGS_FLAKE)
    checked = ok(mvmctl("mvmctl validate", root))
    assert "packages.x86_64-linux.default evaluates" in checked.stdout
    (root / "flake.nix").write_text(PKGS_FLAKE.replace("pkgs.curl ]", "pkgs.curl pkgs.htop ]"))
    line = refused(mvmctl("mvmctl validate", root), "E_NIXPKGS_UNAVAILABLE")
    assert "pkgs.htop is not in the offline package set (known:" in line and "python3" in line
    seed_outcome.works("evaluates with the offline package set; pkgs.htop refused with the list")


@pytest.mark.seed(DEV, "mvmctl build --flake . --profile dev / --no-persistent-builder")
def test_build_profile_and_no_persistent_builder(tmp_path: Path, seed_outcome) -> None:  # type: ignore[no-untyped-def]
    flake = HELLO_FLAKE.replace(
        "packages.x86_64-linux.default =",
        'packages.x86_64-linux.dev = mvm.lib.x86_64-linux.mkGuest { name = "hello-dev"; '
        'entrypoint.shell = "/bin/sh"; };\n    packages.x86_64-linux.default =',
    )
    root = project(tmp_path, flake, MY_APP_TOML)
    built = ok(mvmctl("mvmctl build --flake . --profile dev", root))
    meta = json.loads((Path(built.stdout.strip()) / "mvm-meta.json").read_text())
    assert meta["name"] == "hello-dev" and meta["accessible"] is True
    one_shot = ok(mvmctl("mvmctl build --no-persistent-builder", root))
    assert "one-shot builder requested" in one_shot.stderr
    seed_outcome.works("builds packages.x86_64-linux.dev; --no-persistent-builder says one-shot")


@pytest.mark.parametrize(
    ("line", "code"),
    [
        ("mvmctl up --flake . --cpus 0", "E_VCPUS"),
        ("mvmctl up --flake . --memory 1", "E_MEMORY"),
        ("mvmctl up --flake . --hypervisor vmware", "E_HYPERVISOR_NAME"),
        ("mvmctl up --flake ./nowhere", "E_BUILD_SOURCE"),
        ("mvmctl up --flake github:foo/bar", "E_FLAKE_REF"),
        ("mvmctl build --flake . --profile 'no way'", "E_PROFILE"),
        ("mvmctl up --flake . -v ./config", "E_VOLUME_SPEC"),
        ("mvmctl persistent-builder start --workspace ./nowhere", "E_WORKSPACE"),
        ("mvmctl persistent-builder submit --flake . --attr packages.x.y.z", "E_FLAKE_ATTR"),
        ("mvmctl console", "E_CONSOLE_NO_VM"),
    ],
)
def test_bad_flag_values_are_one_coded_line(tmp_path: Path, line: str, code: str) -> None:
    root = project(tmp_path, HELLO_FLAKE)
    refused(mvmctl(line, root, timeout=120), code)


QUITS_FLAKE = """{
  inputs = { mvm.url = "github:tinylabscom/mvm"; };
  outputs = { mvm, ... }: {
    packages.x86_64-linux.default = mvm.lib.x86_64-linux.mkGuest {
      name = "my-app";
      entrypoint.command = [ "/bin/sh" "-c" "sleep 3; echo bye; exit 3" ];
    };
  };
}
"""


@pytest.mark.seed(BUILDING, "mvmctl run --attached / mvmctl wait my-app / status")
def test_run_attached_returns_the_guests_exit_status(tmp_path: Path, seed_outcome) -> None:  # type: ignore[no-untyped-def]
    root = project(tmp_path, QUITS_FLAKE, MY_APP_TOML)
    run = mvmctl("mvmctl run --attached # attached mode; CLI Ctrl-C kills VM", root)
    try:
        assert run.returncode == 3, run.stderr  # the guest's `exit 3`
        assert "my-app: exited (3)" in run.stderr
        waited = mvmctl(
            "mvmctl wait my-app # block until VM exits (only meaningful for attached)", root
        )
        assert waited.returncode == 1 and waited.stdout.strip() == "3"
        status = ok(mvmctl("mvmctl status my-app", root)).stdout
        assert "start mode: attached" in status and "exit:       3" in status
        assert ok(mvmctl("mvmctl logs my-app", root)).stdout == "bye\n"  # the app, first
    finally:
        ok(mvmctl("mvmctl down my-app", root))
    seed_outcome.works("attached run exits with the guest's status 3; mode.json says attached")


@pytest.mark.seed(
    BEGINNERS, "mvmctl up --flake . -p 8080:8080 -v ./config -v ./secrets -v ./data:1024"
)
def test_up_with_volumes_then_logs_follow_forward_and_down(tmp_path: Path, seed_outcome) -> None:  # type: ignore[no-untyped-def]
    import signal
    import time
    import urllib.request

    root = project(tmp_path, HELLO_FLAKE.replace('"-h" "/etc"', '"-h" "/mnt"'))
    for folder in ("config", "secrets", "data"):
        (root / folder).mkdir()
    (root / "config" / "app.json").write_text('{"greeting": "hi"}\n')
    ok(
        mvmctl(
            "mvmctl up --flake . -p 8080:8080 \\\n-v ./config:/mnt/config \\\n"
            "-v ./secrets:/mnt/secrets \\\n-v ./data:/mnt/data:1024",
            root,
        )
    )
    follow = subprocess.Popen(
        [sys.executable, "-m", "mvm.cli", *shlex.split("mvmctl logs hello -f")[1:]],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    forward = subprocess.Popen(
        [sys.executable, "-m", "mvm.cli", *shlex.split("mvmctl forward hello -p 9090:9090")[1:]],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert forward.stderr is not None
        announced = forward.stderr.readline()  # the forward announces itself once it listens
        assert "9090" in announced, announced
        import socket

        socket.create_connection(("127.0.0.1", 9090), timeout=10).close()  # the host side
        answer = b""
        deadline = time.monotonic() + 30
        while not answer and time.monotonic() < deadline:
            try:  # 9090 in the guest: nothing listens; the host side must accept
                url = "http://127.0.0.1:8080/config/app.json"  # httpd -h /mnt in the guest
                with urllib.request.urlopen(url, timeout=10) as r:
                    answer = r.read().strip()
            except OSError:
                time.sleep(0.2)
        assert answer == b'{"greeting": "hi"}'
    finally:
        forward.send_signal(signal.SIGINT)
        forward.wait(timeout=30)
        ok(mvmctl("mvmctl down hello", root))
    out, _ = follow.communicate(timeout=60)  # -f ends when the VM is down
    assert follow.returncode == 0, out  # the app's view: httpd -f writes nothing, no dmesg
    assert "mvm-init" not in out and "Linux version" not in out, out
    assert (root / "data").exists()
    seed_outcome.works("relative -v paths mount config/secrets read-only and a 1024 MB data volume")
