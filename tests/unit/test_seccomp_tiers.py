"""Seccomp tiers and per-service uids without a VM (issue 15; the seeds' W2.4, W2.1).

The filter itself is the real agent's: ``mvm-agent setpriv --seccomp=TIER`` runs on
this host's kernel, which enforces seccomp exactly as the guest's does. The rest is
the spec rules, mvm-meta.json, the guest tree, the signed plan's label and the audit
entries; tests/integration/test_seccomp_guest.py boots the result.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mvm.backends.guest.build import agent_binary
from mvm.backends.image import builder as ib
from mvm.backends.image.key import spec_json
from mvm.engine.admission.audit import PLAN_ADMITTED, PLAN_LAUNCHED
from mvm.engine.admission.gate import LaunchGate
from mvm.engine.admission.plans import Admission, ExecutionPlan
from mvm.engine.base.errors import ConfigError
from mvm.engine.images.image import Image
from mvm.engine.images.imagespec import ImageSpec, Service, Uids
from mvm.engine.images.specfile import spec_from_dict
from mvm.engine.request.vmrequest import VmRequest
from mvm.engine.vm.uid_check import declared_service_uids, image_security, uid_check_line

# ---------------------------------------------------------------- the filter (real agent)


def _setpriv(tier: str, script: str) -> subprocess.CompletedProcess[str]:
    argv = [str(agent_binary()), "setpriv", "--no-new-privs", f"--seccomp={tier}"]
    return subprocess.run(
        [*argv, "/bin/sh", "-c", script], capture_output=True, text=True, timeout=30, check=False
    )


_PROBE = """\
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
def call(nr, *args):
    r = libc.syscall(nr, *args)
    return 0 if r >= 0 else ctypes.get_errno()
print(open("/proc/self/status").read().split("Seccomp:")[1].split()[0])
print(call(168, 0))   # swapoff(NULL): EPERM (1) only from the filter, else EFAULT/ENOENT
print(call(272, 0))   # unshare(0): a no-op unless filtered
print(call(435, 0, 0))  # clone3(NULL, 0): EINVAL/EFAULT unless filtered (ENOSYS)
if sys.argv[1] == "strict":  # would fork where it is allowed
    print(call(56, 0x10000000 | 17, 0, 0, 0, 0))  # clone(CLONE_NEWUSER|SIGCHLD)
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86_64 syscall numbers")
@pytest.mark.parametrize(
    ("tier", "expected"),
    [
        ("unrestricted", ["0", "not-1", "0", "not-38"]),
        ("standard", ["2", "1", "0", "not-38"]),
        ("strict", ["2", "1", "1", "38", "1"]),  # EPERM, EPERM, ENOSYS, EPERM
    ],
)
def test_tiers_on_the_host_kernel(tier: str, expected: list[str]) -> None:
    python = shutil.which("python3")
    assert python is not None
    argv = [str(agent_binary()), "setpriv", "--no-new-privs", f"--seccomp={tier}"]
    result = subprocess.run(
        [*argv, python, "-c", _PROBE, tier],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    got = result.stdout.split()
    assert len(got) == len(expected), got
    for value, want in zip(got, expected, strict=True):
        if want.startswith("not-"):
            assert value != want[4:], (tier, got)
        else:
            assert value == want, (tier, got)


def test_standard_denies_with_eperm_and_keeps_ordinary_work() -> None:
    result = _setpriv("standard", "grep ^Seccomp: /proc/self/status; swapoff /x; echo rc=$?; ls /")
    assert "Seccomp:\t2" in result.stdout
    assert "rc=1" in result.stdout  # busybox swapoff: EPERM, not a SIGSYS kill
    assert "bin" in result.stdout.split()


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc for the i386-ABI probe")
def test_a_foreign_architecture_call_is_killed(tmp_path: Path) -> None:
    """int 0x80 from an x86_64 process is the i386 ABI: every tier but unrestricted kills it
    (its numbers mean other syscalls, so the list could not hold)."""
    if os.uname().machine != "x86_64":
        pytest.skip("x86_64 only")
    src = tmp_path / "i386.c"
    src.write_text(
        'int main(void){long r; __asm__ volatile("int $0x80":"=a"(r):"a"(20L));'
        "return r > 0 ? 0 : 3;}\n"  # 20 = getpid on i386
    )
    exe = tmp_path / "i386"
    subprocess.run(["gcc", "-O0", "-o", str(exe), str(src)], check=True, capture_output=True)
    base = [str(agent_binary()), "setpriv", "--no-new-privs"]
    free = subprocess.run([*base, "--seccomp=unrestricted", str(exe)], check=False)
    killed = subprocess.run([*base, "--seccomp=standard", str(exe)], check=False)
    if free.returncode != 0:
        pytest.skip("this kernel has no i386 emulation (IA32_EMULATION)")
    assert killed.returncode == -31  # SIGSYS: SECCOMP_RET_KILL_PROCESS


def test_setpriv_refuses_an_unknown_tier() -> None:
    result = _setpriv("lenient", "true")
    assert result.returncode == 2 and "bad option --seccomp=lenient" in result.stderr


# ---------------------------------------------------------------- spec rules


def test_default_tier_is_standard_and_bad_tiers_are_coded() -> None:
    assert ImageSpec(name="a").seccomp == "standard"
    assert ImageSpec(name="a", dev=True).seccomp == "standard"
    with pytest.raises(ConfigError) as info:
        ImageSpec(name="a", seccomp="lax")
    assert info.value.code == "E_SPEC_SECCOMP"
    assert "unrestricted, standard, strict" in info.value.message
    with pytest.raises(ConfigError) as info:
        spec_from_dict({"name": "a", "seccomp": "off"})
    assert info.value.code == "E_SPEC_SECCOMP"
    assert spec_from_dict({"name": "a", "seccomp": "strict"}).seccomp == "strict"


def test_service_uids_sealed_get_their_own_dev_share_the_entrypoints() -> None:
    services = {n: Service(command="sleep 1") for n in ("web", "db", "cache")}
    sealed = ImageSpec(name="a", services=services)
    assert sealed.service_uids == {"cache": 1001, "db": 1002, "web": 1003}  # sorted names
    dev = ImageSpec(name="a", dev=True, services=services)
    assert dev.service_uids == {"cache": 0, "db": 0, "web": 0}
    rootful = ImageSpec(name="a", services=services, uids=Uids(entrypoint=0))
    assert set(rootful.service_uids.values()) == {0}
    around = ImageSpec(
        name="a",
        uids=Uids(entrypoint=1001, agent=1003),
        services={**services, "web": Service(command="x", uid=1002)},
    )
    # never the entrypoint's (1001), the agent's (1003) or a given one (1002)
    assert around.service_uids == {"cache": 1004, "db": 1005, "web": 1002}


def test_service_uid_is_validated() -> None:
    for uid, part in ((990, "equals the agent uid"), (70000, "out of range")):
        spec = ImageSpec(name="a", services={"s": Service(command="x", uid=uid)})
        with pytest.raises(ConfigError) as info:
            ib._validate_spec(spec)
        assert info.value.code == "E_SPEC_UID" and part in info.value.message


def test_spec_hash_is_unchanged_for_specs_that_use_neither() -> None:
    """Defaults leave spec_json as it was, so a spec's identity (and IR-less plan hash)
    only changes when it asks for a tier or a service uid."""
    plain = ImageSpec(name="a", services={"s": Service(command="x")})
    data = json.loads(spec_json(plain))
    assert "seccomp" not in data and "uid" not in data["services"]["s"]
    data = json.loads(
        spec_json(ImageSpec(name="a", seccomp="strict", services={"s": Service("x", uid=5)}))
    )
    assert data["seccomp"] == "strict" and data["services"]["s"]["uid"] == 5


# ---------------------------------------------------------------- meta and tree


def test_meta_and_tree_record_tier_and_service_uids(tmp_path: Path) -> None:
    spec = ImageSpec(
        name="svc",
        seccomp="strict",
        services={"b": Service(command="x", pre_start="true"), "a": Service(command="y")},
    )
    meta = ib.image_meta(spec, "0" * 64)
    assert meta["seccomp_tier"] == "strict"
    assert meta["uids"] == {"agent": 990, "entrypoint": 1000, "services": {"a": 1001, "b": 1002}}
    fake = tmp_path / "fake"
    fake.write_bytes(b"\x7fELF")
    tree = ib._Tree(tmp_path / "tree")
    ib._populate(tree, spec, meta, fake, fake, fake, [], [])
    assert "MVM_SECCOMP=strict\n" in tree.host("/etc/mvm/image.env").read_text()
    assert tree.host("/etc/mvm/services/a/uid").read_text() == "1001\n"
    assert tree.host("/etc/mvm/services/b/uid").read_text() == "1002\n"
    passwd = tree.host("/etc/passwd").read_text().splitlines()
    assert "svc-a:x:1001:1001:svc-a:/:/bin/false" in passwd
    assert "svc-b:x:1002:1002:svc-b:/:/bin/false" in passwd
    assert "svc-a:x:1001:" in tree.host("/etc/group").read_text().splitlines()


def test_image_without_a_recorded_tier_is_unrestricted(tmp_path: Path) -> None:
    old = Image(directory=tmp_path, kernel=tmp_path, rootfs=tmp_path, meta={"sealed": True})
    assert old.seccomp_tier == "unrestricted"  # built before tiers: no filter installed
    assert declared_service_uids({"uids": {"agent": 990, "entrypoint": 1000}}) == {}


def test_image_security_is_what_inspect_shows(tmp_path: Path) -> None:
    for name in ("vmlinux", "rootfs.ext4"):
        (tmp_path / name).write_bytes(b"")
    spec = ImageSpec(name="x", services={"s": Service(command="x")})
    (tmp_path / "mvm-meta.json").write_text(json.dumps(ib.image_meta(spec, "0" * 64)))
    assert image_security(str(tmp_path)) == {
        "seccomp_tier": "standard",
        "uids": {"agent": 990, "entrypoint": 1000, "services": {"s": 1001}},
    }
    assert image_security(str(tmp_path / "missing")) == {}


def test_uid_check_judges_own_service_uids_on_their_own() -> None:
    declared = {"agent": 990, "entrypoint": 1000}
    proc = {"uid": 1001, "euid": 1001, "suid": 1001, "fsuid": 1001, "pid": 7}
    observed = {
        "agent": {"uid": 990, "euid": 990, "suid": 990, "fsuid": 990},
        "services": {"a": proc, "b": {**proc, "uid": 1002, "euid": 1002}},
    }
    line = uid_check_line(declared, observed, {"a": 1001, "b": 1002})
    assert line.startswith("uids: agent 990 (ok), entrypoint 1000 (not running)")
    assert "service a 1001 (ok)" in line
    assert "service b 1002 (MISMATCH: service b pid 7 runs as uid 1001/1002)" in line


# ---------------------------------------------------------------- plan label and audit


async def test_plan_label_and_audit_entries_carry_the_tier(mvm_home: Path, tmp_path: Path) -> None:
    for name in ("vmlinux", "rootfs.ext4"):
        (tmp_path / name).write_bytes(b"")
    meta = ib.image_meta(ImageSpec(name="x", seccomp="strict"), "a" * 64)
    (tmp_path / "mvm-meta.json").write_text(json.dumps(meta))
    admission = Admission()
    gate = LaunchGate(admission)
    plan = await gate.admit(VmRequest(name="x", image_dir=str(tmp_path)), Image.load(tmp_path))
    assert plan.labels == {"seccomp_tier": "strict"}
    assert plan.body()["labels"] == {"seccomp_tier": "strict"}  # signed
    assert ExecutionPlan.from_dict(plan.to_dict()) == plan
    await gate.launched(plan, pid=1)
    entries = {e.event: e for e in admission.audit.entries()}
    assert entries[PLAN_ADMITTED].data["seccomp_tier"] == "strict"
    assert entries[PLAN_LAUNCHED].data["seccomp_tier"] == "strict"
    assert admission.audit.verify().ok


def test_a_plan_without_labels_signs_as_before(mvm_home: Path) -> None:
    from mvm.engine.ir import Resources

    admission = Admission()
    plan = admission.issue(
        vm_name="x", ir_hash="b" * 64, image_ref="i", resources=Resources(vcpus=1)
    )
    assert "labels" not in plan.to_dict() and "labels" not in plan.body()
    admission.admit(plan)
