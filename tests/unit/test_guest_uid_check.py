"""The host half of `mvmctl status`'s uid cross-check, and the console-shell image hook."""

from __future__ import annotations

from pathlib import Path

import pytest

from mvm.backends.image_shell import add_console_shell, console_shell
from mvm.engine.errors import ConfigError
from mvm.engine.imagespec import ImageSpec, Service, Uids
from mvm.engine.uid_check import declared_uids, uid_check_line


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
        self.files: dict[str, str] = {}
        self.copies: dict[str, Path] = {}

    def file(self, guest: str, data: bytes | str, mode: int = 0o644) -> None:
        self.files[guest] = str(data)

    def copy(self, guest: str, source: Path, mode: int) -> None:
        self.copies[guest] = source


def test_console_shell_hook(tmp_path: Path) -> None:
    assert console_shell(ImageSpec(name="a", command=("x",), dev=True)) == "/bin/sh"
    plain = _Rec()
    add_console_shell(plain, ImageSpec(name="a", services={"w": Service(command="x")}))
    assert plain.files == {} and plain.copies == {}
    fake_bash = tmp_path / "bash-static"
    fake_bash.write_text("#!/bin/sh\n")
    bash = _Rec()
    add_console_shell(bash, ImageSpec(name="b", shell="/bin/bash", dev=True), bash=fake_bash)
    assert bash.files == {"/etc/mvm/console": "/bin/bash\n"}
    assert bash.copies == {"/bin/bash": fake_bash}
    own = _Rec()
    spec = ImageSpec(name="c", shell="/bin/bash", extra_files={"/bin/bash": "#!/bin/sh\n"})
    add_console_shell(own, spec, bash=tmp_path / "missing")
    assert own.copies == {}
    with pytest.raises(ConfigError) as info:
        add_console_shell(_Rec(), ImageSpec(name="d", shell="/bin/bash"), bash=tmp_path / "no")
    assert info.value.code == "E_SPEC_SHELL"


def test_shell_must_be_absolute_and_not_with_a_command() -> None:
    for bad in ({"shell": "bash"}, {"shell": "/bin/bash", "command": ("x",)}):
        with pytest.raises(ConfigError) as info:
            ImageSpec(name="e", uids=Uids(), **bad)  # type: ignore[arg-type]
        assert info.value.code == "E_SPEC_ENTRYPOINT"
    # dev-image.txt: services next to the shell entrypoint, which stays the kind.
    both = ImageSpec(name="f", shell="/bin/bash", services={"db": Service(command="x")}, dev=True)
    assert both.entrypoint_kind == "shell"
