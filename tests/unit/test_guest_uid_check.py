"""The host half of `mvmctl status`'s uid cross-check, and the console-shell image hook."""

from __future__ import annotations

from pathlib import Path

import pytest

from mvm.backends.image.shell import add_console_shell
from mvm.engine.base.errors import ConfigError
from mvm.engine.images.imagespec import ImageSpec, Service
from mvm.engine.vm.uid_check import declared_uids, uid_check_line


def _p(pid: int, uid: int, **over: int) -> dict[str, int]:
    return {"pid": pid, "uid": uid, "euid": uid, "suid": uid, "fsuid": uid, "gid": uid} | over


def test_declared_uids_from_meta_and_defaults() -> None:
    assert declared_uids({"uids": {"agent": 5000, "entrypoint": 0}}) == {
        "agent": 5000,
        "entrypoint": 0,
    }
    assert declared_uids({"sealed": True}) == {"agent": 990, "entrypoint": 1000}
    assert declared_uids({"sealed": False}) == {"agent": 990, "entrypoint": 0}


def test_every_uid_must_match_and_services_are_checked() -> None:
    declared = {"agent": 990, "entrypoint": 1000}
    ok = {"agent": _p(5, 990), "entrypoint": None, "services": {"web": _p(8, 1000)}}
    assert uid_check_line(declared, ok) == "uids: agent 990 (ok), entrypoint 1000 (ok)"
    # A half-dropped process (saved uid still 0) is a mismatch, not ok.
    half = {**ok, "services": {"web": _p(8, 1000, suid=0), "db": _p(9, 1000)}}
    assert uid_check_line(declared, half) == (
        "uids: agent 990 (ok), entrypoint 1000 (MISMATCH: service web pid 8 runs as uid 0/1000)"
    )
    idle = {"agent": _p(5, 990), "entrypoint": None, "services": {}}
    assert uid_check_line(declared, idle) == "uids: agent 990 (ok), entrypoint 1000 (not running)"


class _Rec:
    def __init__(self) -> None:
        self.copies: dict[str, Path] = {}

    def copy(self, guest: str, source: Path, mode: int) -> None:
        self.copies[guest] = source


def test_bash_hook_copies_bash_static_only_when_needed(tmp_path: Path) -> None:
    plain = _Rec()
    add_console_shell(plain, ImageSpec(name="a", shell="/bin/sh"))
    assert plain.copies == {}
    fake_bash = tmp_path / "bash-static"
    fake_bash.write_text("#!/bin/sh\n")
    bash = _Rec()
    add_console_shell(bash, ImageSpec(name="b", shell="/bin/bash"), bash=fake_bash)
    assert bash.copies == {"/bin/bash": fake_bash}
    own = _Rec()
    spec = ImageSpec(name="c", shell="/bin/bash", extra_files={"/bin/bash": "#!/bin/sh\n"})
    add_console_shell(own, spec, bash=tmp_path / "missing")
    assert own.copies == {}
    with pytest.raises(ConfigError) as info:
        add_console_shell(_Rec(), ImageSpec(name="d", shell="/bin/bash"), bash=tmp_path / "no")
    assert info.value.code == "E_SPEC_SHELL"


def test_services_next_to_a_shell_keep_the_shell_kind() -> None:
    # dev-image.txt: services next to the shell entrypoint, which stays the kind.
    both = ImageSpec(name="f", shell="/bin/bash", services={"db": Service(command="x")})
    assert both.entrypoint_kind == "shell" and both.accessible
