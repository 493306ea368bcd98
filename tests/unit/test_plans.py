"""Signed execution plans: host key handling, tampering, replay, validity window."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import attrs
import pytest

from mvm.engine.admission.audit import PLAN_ADMITTED, PLAN_FAILED, PLAN_LAUNCHED, AuditLog
from mvm.engine.admission.keys import KEY_FILENAME, HostKey, host_key_path
from mvm.engine.admission.plans import (
    CLOCK_SKEW_SECS,
    Admission,
    ExecutionPlan,
    sign_plan,
    verify_plan,
)
from mvm.engine.base.errors import (
    BackendError,
    ConfigError,
    KeyPermissions,
    NonceReplay,
    PlanExpired,
    PlanNotYetValid,
    PlanSignatureError,
    SecurityError,
)
from mvm.engine.ir import Resources

IR_HASH = "58b459a743096f4ce8d6504740748f3e53e70fade9c53889510a25b1b7595f49"
T0 = 1_800_000_000


def issue(admission: Admission, **overrides: Any) -> ExecutionPlan:
    args: dict[str, Any] = {
        "vm_name": "hello",
        "ir_hash": IR_HASH,
        "image_ref": "mvm-image:hello@" + "c" * 64,
        "resources": Resources(vcpus=1, memory_mb=256, boot_timeout_secs=30),
        "admission_profile": "default",
        "valid_for_secs": 300,
        "now": T0,
    }
    args.update(overrides)
    return admission.issue(**args)


@pytest.fixture
def admission(mvm_home: Path) -> Admission:
    return Admission()


# --- host key ----------------------------------------------------------------------


def test_key_is_created_on_first_use_with_mode_0600(mvm_home: Path) -> None:
    path = mvm_home / "keys" / KEY_FILENAME
    assert host_key_path() == path and not path.exists()
    key = HostKey.load_or_create()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    pub = path.with_name(KEY_FILENAME + ".pub").read_text().split()
    assert pub[0] == "ed25519" and pub[1] == key.public_b64()
    assert HostKey.load_or_create().key_id == key.key_id  # loaded, not regenerated


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_readable_by_others_is_refused_with_a_hint(mvm_home: Path, mode: int) -> None:
    key = HostKey.load_or_create()
    key.path.chmod(mode)
    with pytest.raises(KeyPermissions) as info:
        HostKey.load_or_create()
    assert isinstance(info.value, SecurityError)
    assert info.value.code == "E_KEY_PERMISSIONS"
    assert f"chmod 600 {key.path}" in info.value.one_line()
    with pytest.raises(KeyPermissions):
        Admission()


def test_symlinked_or_garbage_key_is_refused(mvm_home: Path, tmp_path: Path) -> None:
    path = host_key_path()
    path.parent.mkdir(parents=True)
    real = tmp_path / "real.pem"
    real.write_bytes(b"junk")
    real.chmod(0o600)
    path.symlink_to(real)
    with pytest.raises(KeyPermissions, match=r"symlink|safely"):
        HostKey.load_or_create()
    path.unlink()
    os.link(real, path)
    with pytest.raises(KeyPermissions, match="PEM"):
        HostKey.load_or_create()


def test_concurrent_first_use_agrees_on_one_key(mvm_home: Path) -> None:
    code = "from mvm.engine.admission.keys import HostKey; print(HostKey.load_or_create().key_id)"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    # The last line is the id; the process that created the key also logs that it did.
    ids = {p.communicate(timeout=60)[0].strip().splitlines()[-1] for p in procs}
    assert len(ids) == 1 and len(ids.pop()) == 16
    leftovers = [p.name for p in host_key_path().parent.iterdir()]
    assert sorted(leftovers) == [KEY_FILENAME, KEY_FILENAME + ".pub"]


# --- signing and verification ------------------------------------------------------


def test_plan_round_trips_through_json_and_verifies(admission: Admission) -> None:
    plan = issue(admission)
    assert plan.not_after - plan.not_before == 300 and len(plan.nonce) == 32
    assert plan.key_id == admission.key.key_id
    wire = json.dumps(plan.to_dict())
    again = ExecutionPlan.from_dict(json.loads(wire))
    assert again == plan
    verify_plan(again, admission.key.public_key, now=T0 + 1)
    assert issue(admission).nonce != plan.nonce


CHANGES: dict[str, Any] = {
    "vm_name": "other",
    "ir_hash": "0" * 64,
    "image_ref": "mvm-image:evil",
    "resources": Resources(vcpus=64, memory_mb=65536, boot_timeout_secs=30),
    "admission_profile": "dev",
    "not_before": T0 - 10_000,
    "not_after": T0 + 10**7,
    "nonce": "0" * 32,
}


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_any_altered_field_fails_the_signature(admission: Admission, field: str) -> None:
    tampered = attrs.evolve(issue(admission), **{field: CHANGES[field]})
    with pytest.raises(PlanSignatureError) as info:
        verify_plan(tampered, admission.key.public_key, now=T0 + 1)
    assert info.value.code == "E_PLAN_SIGNATURE"
    with pytest.raises(PlanSignatureError):
        admission.admit(tampered, now=T0 + 1)


def test_flipped_signature_bit_and_garbage_fail(admission: Admission) -> None:
    plan = issue(admission)
    sig = bytearray(base64.b64decode(plan.signature))
    sig[10] ^= 1
    for signature in (base64.b64encode(bytes(sig)).decode(), "not base64!", "", "AAAA"):
        with pytest.raises(PlanSignatureError):
            verify_plan(attrs.evolve(plan, signature=signature), admission.key.public_key, now=T0)


def test_plan_signed_by_another_key_fails(admission: Admission, tmp_path: Path) -> None:
    other = HostKey.load_or_create(tmp_path / "other.ed25519")
    forged = sign_plan(
        other, vm_name="hello", ir_hash=IR_HASH, image_ref="x", resources=Resources(), now=T0
    )
    with pytest.raises(PlanSignatureError, match="signed by key"):
        admission.admit(forged, now=T0)
    # Claiming our key id does not help either.
    with pytest.raises(PlanSignatureError, match="altered"):
        admission.admit(attrs.evolve(forged, key_id=admission.key.key_id), now=T0)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(extra="x"),
        lambda d: d.pop("nonce"),
        lambda d: d.update(not_after=str(d["not_after"])),
        lambda d: d["resources"].update(gpus=1),
    ],
)
def test_malformed_plan_documents_are_signature_errors(admission: Admission, mutate: Any) -> None:
    data = issue(admission).to_dict()
    mutate(data)
    with pytest.raises(PlanSignatureError, match="malformed"):
        ExecutionPlan.from_dict(data)


def test_sign_plan_refuses_bad_input(admission: Admission) -> None:
    with pytest.raises(ConfigError):
        issue(admission, ir_hash="ABC")
    with pytest.raises(ConfigError):
        issue(admission, valid_for_secs=0)


# --- window and replay ---------------------------------------------------------------


def test_expired_plan_is_refused(admission: Admission) -> None:
    plan = issue(admission)
    with pytest.raises(PlanExpired) as info:
        admission.admit(plan, now=plan.not_after)
    assert info.value.code == "E_PLAN_EXPIRED"
    admission.admit(plan, now=plan.not_after - 1)  # the nonce was not spent by the refusal


def test_not_yet_valid_plan_is_refused_beyond_clock_skew(admission: Admission) -> None:
    plan = issue(admission)
    with pytest.raises(PlanNotYetValid) as info:
        admission.admit(plan, now=plan.not_before - CLOCK_SKEW_SECS - 1)
    assert info.value.code == "E_PLAN_NOT_YET_VALID"
    admission.admit(plan, now=plan.not_before - CLOCK_SKEW_SECS + 1)


def test_replayed_nonce_is_refused_even_by_a_new_process(admission: Admission) -> None:
    plan = issue(admission)
    admission.admit(plan, now=T0 + 1)
    with pytest.raises(NonceReplay) as info:
        admission.admit(plan, now=T0 + 2)
    assert info.value.code == "E_NONCE_REPLAY"
    with pytest.raises(NonceReplay):
        Admission().admit(plan, now=T0 + 3)  # the store is on disk, not in memory


def test_concurrent_admission_of_one_plan_admits_exactly_once(admission: Admission) -> None:
    plan = issue(admission)
    results: list[str] = []

    def attempt() -> None:
        try:
            Admission().admit(plan, now=T0 + 1)
            results.append("ok")
        except NonceReplay:
            results.append("replay")

    threads = [threading.Thread(target=attempt) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["ok"] + ["replay"] * 5


# --- audit trail ---------------------------------------------------------------------


def test_admission_launch_and_failure_are_audited_in_one_chain(admission: Admission) -> None:
    first, second = issue(admission), issue(admission)
    admission.admit(first, now=T0 + 1)
    admission.record_launched(first, pid=1234)
    admission.admit(second, now=T0 + 1)
    admission.record_failed(second, BackendError("qemu exited", code="E_QEMU_EXIT"))
    with pytest.raises(NonceReplay):
        admission.admit(second, now=T0 + 2)
    entries = AuditLog(admission.db_path).entries()
    assert [e.event for e in entries] == [
        PLAN_ADMITTED,
        PLAN_LAUNCHED,
        PLAN_ADMITTED,
        PLAN_FAILED,
        "plan.rejected",
    ]
    assert entries[0].data["plan"] == first.plan_hash
    assert entries[1].data["pid"] == 1234 and entries[1].data["ir_hash"] == IR_HASH
    assert entries[3].data["code"] == "E_QEMU_EXIT"
    assert entries[4].data["code"] == "E_NONCE_REPLAY"
    assert admission.audit.verify().ok


async def test_async_admission(admission: Admission) -> None:
    plan = admission.issue(vm_name="hello", ir_hash=IR_HASH, image_ref="img", resources=Resources())
    entry = await admission.admit_async(plan)
    assert entry.event == PLAN_ADMITTED
    await admission.record_launched_async(plan, pid=1)
    await admission.record_failed_async(plan, RuntimeError("boom"))
    with pytest.raises(NonceReplay):
        await admission.admit_async(plan)
    events = [e.event for e in admission.audit.entries()]
    assert events == [PLAN_ADMITTED, PLAN_LAUNCHED, PLAN_FAILED, "plan.rejected"]
