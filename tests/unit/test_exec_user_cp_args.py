"""exec -u resolution against guest files, and cp's SRC/DST split."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mvm.backends.guest.exec_user import resolve_user
from mvm.cli.cp_commands import cp_plan, split_remote
from mvm.engine.base.errors import ConfigError, NotFoundError

PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n# c\n"
GROUP = "root:x:0:\nstaff:x:50:app\n"


def test_names_numbers_and_groups() -> None:
    assert resolve_user("app", PASSWD, GROUP).uid == 1000
    assert resolve_user("app", PASSWD, GROUP).home == "/home/app"
    assert resolve_user("0", PASSWD, GROUP).name == "root"
    numeric = resolve_user("4321", PASSWD, GROUP)
    assert (numeric.uid, numeric.gid, numeric.home) == (4321, 4321, "/")
    assert resolve_user("app:staff", PASSWD, GROUP).gid == 50
    assert resolve_user("app:7", PASSWD, GROUP).gid == 7


@pytest.mark.parametrize("spec", ["ghost", "app:nogroup"])
def test_unknown_user_or_group(spec: str) -> None:
    with pytest.raises(NotFoundError) as info:
        resolve_user(spec, PASSWD, GROUP)
    assert info.value.code == "E_EXEC_USER_UNKNOWN"


def test_split_remote() -> None:
    assert split_remote("vm1:/tmp/x") == ("vm1", "/tmp/x")
    assert split_remote("vm1:") == ("vm1", "/")
    assert split_remote("./a:b") is None
    assert split_remote("/abs:path") is None
    assert split_remote("plain") is None
    assert cp_plan("f", "vm:/d") == ("vm", "put", "f", "/d")
    assert cp_plan("vm:/s", "out") == ("vm", "get", "out", "/s")


@pytest.mark.parametrize(("src", "dst"), [("a", "b"), ("v:/a", "w:/b")])
def test_cp_needs_exactly_one_remote(src: str, dst: str) -> None:
    with pytest.raises(ConfigError) as info:
        cp_plan(src, dst)
    assert info.value.code == "E_CP_ARGS"


def test_exec_parser_takes_docker_flags() -> None:
    from mvm.cli.app import build_parser

    args = build_parser().parse_args(
        [
            "exec",
            "-it",
            "-w",
            "/srv",
            "-u",
            "app",
            "-e",
            "A=1",
            "-e",
            "B",
            "--env-file",
            "f",
            "vm",
            "--",
            "sh",
            "-c",
            "exit 7",
        ]
    )
    assert (args.interactive, args.tty, args.workdir, args.user) == (True, True, "/srv", "app")
    assert (args.env, args.env_file, args.name) == (["A=1", "B"], ["f"], "vm")
    assert args.argv[-3:] == ["sh", "-c", "exit 7"]
    run = build_parser().parse_args(["up", "demo", "-e", "K=V", "--env-file", "x.env"])
    assert (run.env, run.env_file) == (["K=V"], ["x.env"])
    cp = build_parser().parse_args(["cp", "./a", "vm:/b"])
    assert (cp.src, cp.dst, cp.handler) == ("./a", "vm:/b", "cp_commands:cmd_cp")


def _tar(entries: list[tuple[str, bytes | None, int, str | None]]) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, body, mode, link in entries:
            info = tarfile.TarInfo(name)
            info.mode = mode
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            elif body is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def test_get_extract_renames_keeps_modes_and_symlinks(tmp_path: Path) -> None:
    import io
    import stat

    from mvm.backends.guest.files import _extract

    data = _tar(
        [
            ("tree", None, 0o555, None),
            ("tree/run.sh", b"#!/bin/sh\n", 0o4750, None),
            ("tree/etc", None, 0o755, "/etc"),
        ]
    )
    _extract(io.BytesIO(data), tmp_path, "tree", "copy")
    assert stat.S_IMODE((tmp_path / "copy").stat().st_mode) == 0o555
    assert stat.S_IMODE((tmp_path / "copy" / "run.sh").stat().st_mode) == 0o750  # no setuid
    assert os.readlink(tmp_path / "copy" / "etc") == "/etc"
    (tmp_path / "copy").chmod(0o755)


@pytest.mark.parametrize(
    "entries",
    [
        [("tree/../../evil", b"x", 0o644, None)],
        [
            ("tree", None, 0o755, None),
            ("tree/l", None, 0o777, "/tmp"),
            ("tree/l/x", b"x", 0o644, None),
        ],
    ],
)
def test_get_extract_never_writes_outside(
    tmp_path: Path, entries: list[tuple[str, bytes | None, int, str | None]]
) -> None:
    import io
    import tarfile

    from mvm.backends.guest.files import _extract

    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(tarfile.FilterError):
        _extract(io.BytesIO(_tar(entries)), dest, "tree", "tree")
    assert not (tmp_path / "evil").exists()
