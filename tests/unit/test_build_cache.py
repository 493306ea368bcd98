"""Build cache keys, staging/promotion, damage handling; auto mode's choice and reasons."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mvm.backends.demo import DEMO_SPEC
from mvm.engine.base.errors import BuildError, BuildPhaseError, ConfigError
from mvm.engine.builders import BuildJob
from mvm.engine.builders.auto import choose_builder, probe_host, probe_vsock
from mvm.engine.builders.cache import BuildCache, job_key, tree_hash
from mvm.engine.builders.offline import flake_to_spec
from mvm.engine.builders.vsock import VsockTarget

MKGUEST_FLAKE = """{
  inputs.mvm.url = "git+file:///somewhere/mvm?dir=nix";
  outputs = { self, mvm, ... }: {
    packages.x86_64-linux.default = mvm.lib.x86_64-linux.mkGuest {
      name = "web";
      services.web = { command = "httpd -f -p 80 -h /srv/www"; };
      healthChecks.web = { healthCmd = "wget -q -O /dev/null http://127.0.0.1/"; };
      packages = [ "httpd" "wget" ];
      extraFiles."/srv/www/index.html" = "<h1>hi</h1>\\n";
      dev = true;
    };
  };
}
"""


def flake(root: Path, body: str = MKGUEST_FLAKE, lock: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "flake.nix").write_text(body)
    if lock is not None:
        (root / "flake.lock").write_text(lock)
    return root


def fill(out: Path, marker: str = "x") -> None:
    (out / "vmlinux").write_text(f"kernel {marker}")
    (out / "rootfs.ext4").write_text(f"rootfs {marker}")
    (out / "mvm-meta.json").write_text('{"name": "t", "sealed": false}')  # no verity tree


def test_tree_hash_ignores_vcs_and_result_links_but_sees_content_and_modes(tmp_path: Path) -> None:
    src = flake(tmp_path / "f")
    base = tree_hash(src)
    (src / ".git").mkdir()
    (src / ".git" / "index").write_text("noise")
    (src / "result").symlink_to("/nix/store/abc-image")
    assert tree_hash(src) == base
    (src / "script.sh").write_text("echo hi\n")
    with_file = tree_hash(src)
    assert with_file != base
    (src / "script.sh").chmod(0o755)
    assert tree_hash(src) != with_file


def test_keys_follow_lock_source_attr_and_family(tmp_path: Path) -> None:
    src = flake(tmp_path / "f", lock='{"nodes": {"nixpkgs": {"rev": "a"}}}')
    job = BuildJob(name="w", source=src)
    key = job_key(job, "nix")
    assert key == job_key(job, "nix")  # stable
    assert key.inputs["flake_lock"] != "unlocked"
    assert job_key(BuildJob(name="w", source=src, attr="dev"), "nix").key != key.key
    assert job_key(job, "offline").key != key.key
    (src / "flake.lock").write_text('{"nodes": {"nixpkgs": {"rev": "b"}}}')
    assert job_key(job, "nix").key != key.key  # bumped input: rebuild
    spec_key = job_key(BuildJob(name="demo", spec=DEMO_SPEC), "offline")
    assert spec_key == job_key(BuildJob(name="other-label", spec=DEMO_SPEC), "offline")
    assert spec_key.inputs["kind"] == "spec"


def test_keys_follow_the_installed_library(monkeypatch: pytest.MonkeyPatch) -> None:
    """An mvm upgrade (new agent, /init, Nix library) must not serve an old image."""
    from mvm.engine.builders import cache

    job = BuildJob(name="demo", spec=DEMO_SPEC)
    before = job_key(job, "offline")
    assert before.inputs["library"] == cache.library_fingerprint()
    monkeypatch.setattr(cache, "library_fingerprint", lambda: "0" * 64)
    assert job_key(job, "offline").key != before.key


async def test_promotion_is_atomic_and_records_a_manifest(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path / "c")
    key = job_key(BuildJob(name="w", source=flake(tmp_path / "f")), "nix")
    async with cache.staging(key, mode="host") as out:
        fill(out)
        assert out.parent == cache.root and out.name.startswith(".staging-")
        assert cache.lookup(key.key) is None  # nothing visible before the block ends
    image = cache.lookup(key.key)
    assert image is not None and image.directory == cache.path(key.key)
    assert image.kernel.read_text() == "kernel x"
    assert '"mode": "host"' in (image.directory / "mvm-build.json").read_text()
    assert cache.staging_dirs() == []


async def test_failed_or_incomplete_build_leaves_nothing(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path / "c")
    key = job_key(BuildJob(name="w", source=flake(tmp_path / "f")), "nix")
    with pytest.raises(RuntimeError):
        async with cache.staging(key, mode="host") as out:
            fill(out)
            raise RuntimeError("builder died")
    with pytest.raises(BuildPhaseError) as info:
        async with cache.staging(key, mode="host") as out:
            (out / "vmlinux").write_text("only a kernel")
    assert info.value.code == "E_BUILD_ARTIFACTS"
    assert "rootfs.ext4" in info.value.message
    assert list(cache.root.iterdir()) == []


async def test_damaged_entry_is_dropped_and_stale_staging_swept(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path / "c")
    key = job_key(BuildJob(name="w", source=flake(tmp_path / "f")), "nix")
    async with cache.staging(key, mode="host") as out:
        fill(out)
    (cache.path(key.key) / "rootfs.ext4").unlink()
    assert cache.lookup(key.key) is None
    assert not cache.path(key.key).exists()
    old = cache.root / ".staging-dead-1234"
    old.mkdir()
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    fresh = cache.root / ".staging-live-5678"
    fresh.mkdir()
    assert cache.sweep() == 1
    assert cache.staging_dirs() == [fresh]


async def test_flake_to_spec_reads_a_plain_mkguest_flake(tmp_path: Path) -> None:
    spec = await flake_to_spec(flake(tmp_path / "f"), "default")
    assert spec.name == "web" and spec.dev
    assert spec.packages == ("httpd", "wget")
    assert spec.health_checks["web"].health_cmd.startswith("wget")
    with pytest.raises(ConfigError) as info:
        await flake_to_spec(tmp_path / "f", "missing")
    assert info.value.code == "E_FLAKE_OFFLINE"
    assert "no packages.x86_64-linux.missing" in info.value.message


async def test_flake_with_other_inputs_cannot_go_offline(tmp_path: Path) -> None:
    body = "{ outputs = { self, flake-utils }: { }; }"
    with pytest.raises(ConfigError) as info:
        await flake_to_spec(flake(tmp_path / "f", body), "default")
    assert "needs inputs flake-utils" in info.value.message


def test_host_probe_explains_nix_without_a_store(tmp_path: Path) -> None:
    probe = probe_host(str(tmp_path / "no-nix"))
    assert not probe.ok and "not found" in probe.reason
    if not Path("/nix/store").exists():
        real = probe_host("nix")
        assert not real.ok
        assert "no Nix store" in real.reason or "not found" in real.reason


async def test_auto_falls_back_to_offline_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MVM_BUILDER_SSH", raising=False)
    monkeypatch.delenv("MVM_BUILDER_VSOCK", raising=False)
    job = BuildJob(name="web", source=flake(tmp_path / "f"))
    choice = await choose_builder(job, nix=str(tmp_path / "no-nix"))
    assert choice.mode == "offline" and choice.fell_back
    assert choice.job.spec is not None and choice.job.spec.name == "web"
    text = choice.explanation
    assert "skip host:" in text and "auto never builds on the host" in text
    assert "skip ssh: no builder configured" in text and "skip vsock:" in text
    assert "use  offline:" in text and "builds identically, without a builder VM" in text
    spec_choice = await choose_builder(BuildJob(name="demo", spec=DEMO_SPEC))
    assert spec_choice.mode == "offline" and not spec_choice.fell_back


async def test_auto_with_nothing_usable_lists_every_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MVM_BUILDER_SSH", raising=False)
    monkeypatch.delenv("MVM_BUILDER_VSOCK", raising=False)
    job = BuildJob(name="x", source=flake(tmp_path / "f", "{ outputs = { self, foo }: { }; }"))
    with pytest.raises(BuildError) as info:
        await choose_builder(job, nix=str(tmp_path / "no-nix"))
    assert info.value.code == "E_BUILD_NO_BUILDER"
    for mode in ("host:", "ssh:", "vsock:", "offline:"):
        assert mode in info.value.message
    with pytest.raises(BuildError) as forced:
        await choose_builder(job, "host", nix=str(tmp_path / "no-nix"))
    assert forced.value.code == "E_BUILD_MODE"


def test_vsock_probe_says_what_is_missing(tmp_path: Path) -> None:
    if not Path("/dev/vhost-vsock").exists():
        assert "/dev/vhost-vsock is absent" in probe_vsock(None).reason
    stand_in = VsockTarget.parse(f"unix:{tmp_path}/nothing.sock")
    assert probe_vsock(stand_in).reason == f"no socket at {tmp_path}/nothing.sock"
    assert VsockTarget.parse("vsock:3:5000").port == 5000
    with pytest.raises(ConfigError):
        VsockTarget.parse("vsock:abc")
