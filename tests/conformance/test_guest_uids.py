"""building-microvm-images.txt: the `uids` knob, as mkGuest arguments given to ImageSpec.

The seed's three uids examples, verbatim, each assembled into an offline guest
tree (no boot: tests/integration/test_guest_console.py boots the dev shells) and
checked where /init and the agent read them: /etc/mvm/image.env, /etc/passwd,
mvm-meta.json's ``uids`` (what ``mvmctl status`` cross-checks against the guest's
/proc/<pid>/status) and, for the rootless shell, bash itself run as uid 1000.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from mvm.backends.guest.build import agent_binary, init_script
from mvm.backends.image.builder import image_meta
from mvm.backends.image.layout import BUSYBOX
from mvm.backends.image.tree import _populate, _Tree
from mvm.engine.images.imagespec import ImageSpec, Uids
from mvm.engine.vm.uid_check import declared_uids, uid_check_line

ROOTLESS_DEV_SHELL = """\
# Rootless dev shell — forces non-root even in dev mode.
mkGuest {
entrypoint.shell = "/bin/bash";
uids = { entrypoint = 1000; };
}"""

ROOTFUL_PROD = """\
# Rootful prod workload — explicit override, rarely the right call.
mkGuest {
entrypoint.command = [ "/usr/local/bin/serve" ];
uids = { entrypoint = 0; };
}"""

AGENT_UID = """\
# Non-default agent uid (e.g. to avoid collisions with host-side ranges).
mkGuest {
entrypoint.command = [ "/bin/x" ];
uids = { agent = 5000; };
}"""


def _tree(tmp_path: Path, spec: ImageSpec) -> tuple[Path, dict[str, object]]:
    applets = sorted(
        subprocess.run(
            [str(BUSYBOX), "--list-full"], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    meta = image_meta(spec, "0" * 64)
    tree = _Tree(tmp_path / "tree")
    _populate(tree, spec, meta, agent_binary(), init_script(), BUSYBOX, applets, [])
    return tree.root, meta


def _image_env(root: Path) -> dict[str, str]:
    lines = (root / "etc/mvm/image.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines)


@pytest.mark.seed(
    "building-microvm-images.txt", "rootless dev shell: uids = { entrypoint = 1000; }"
)
def test_rootless_dev_shell(tmp_path: Path, seed_outcome) -> None:  # type: ignore[no-untyped-def]
    assert 'entrypoint.shell = "/bin/bash"' in ROOTLESS_DEV_SHELL
    # entrypoint.shell infers dev = true in mkGuest; ImageSpec spells it out.
    spec = ImageSpec(name="rootless", shell="/bin/bash", uids=Uids(entrypoint=1000), dev=True)
    root, meta = _tree(tmp_path, spec)
    assert meta["uids"] == {"agent": 990, "entrypoint": 1000, "services": {}}
    assert meta["rootless_entrypoint"] is True and meta["accessible"] is True
    env = _image_env(root)
    assert (env["MVM_ENTRYPOINT_KIND"], env["MVM_ENTRYPOINT_UID"]) == ("shell", "1000")
    assert env["MVM_SHELL"] == "/bin/bash"
    assert "app:x:1000:1000:app:/home/app:/bin/sh" in (root / "etc/passwd").read_text()
    if os.geteuid() != 0:
        pytest.skip("running bash as uid 1000 in the tree needs root (chroot)")
    # As /init and spawnd start it: setpriv --reuid=1000 --regid=1000 --clear-groups --no-new-privs
    ran = subprocess.run(
        ["chroot", str(root), "/usr/bin/mvm-agent", "setpriv", "--reuid=1000", "--regid=1000",
         "--clear-groups", "--no-new-privs", "/bin/bash", "-c",
         'echo "$(id -u) $(id -g) ${BASH_VERSION%%.*}"'],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert ran.stdout.split() == ["1000", "1000", "5"], ran.stderr
    seed_outcome.works("image: shell kind, uid 1000, /bin/bash from bash-static runs as uid 1000")


@pytest.mark.seed(
    "building-microvm-images.txt", "rootful prod workload: uids = { entrypoint = 0; }"
)
def test_rootful_prod_workload(tmp_path: Path, seed_outcome) -> None:  # type: ignore[no-untyped-def]
    assert 'entrypoint.command = [ "/usr/local/bin/serve" ]' in ROOTFUL_PROD
    spec = ImageSpec(
        name="serve",
        command=("/usr/local/bin/serve",),
        uids=Uids(entrypoint=0),
        extra_files={"/usr/local/bin/serve": "#!/bin/sh\nexec httpd -f -p 8080\n"},
    )
    root, meta = _tree(tmp_path, spec)
    assert meta["uids"] == {"agent": 990, "entrypoint": 0, "services": {}}
    assert meta["rootless_entrypoint"] is False and meta["sealed"] is True
    env = _image_env(root)
    assert (env["MVM_ENTRYPOINT_UID"], env["MVM_SEALED"]) == ("0", "1")
    assert env["MVM_SHELL"] == "/bin/sh"  # what console would open (sealed: refused anyway)
    seed_outcome.works("sealed command image whose entrypoint runs as uid 0")


@pytest.mark.seed("building-microvm-images.txt", "non-default agent uid: uids = { agent = 5000; }")
def test_non_default_agent_uid(tmp_path: Path, seed_outcome) -> None:  # type: ignore[no-untyped-def]
    assert "uids = { agent = 5000; };" in AGENT_UID
    spec = ImageSpec(
        name="x",
        command=("/bin/x",),
        uids=Uids(agent=5000),
        extra_files={"/bin/x": "#!/bin/sh\necho x\n"},
    )
    root, meta = _tree(tmp_path, spec)
    assert meta["uids"] == {"agent": 5000, "entrypoint": 1000, "services": {}}
    assert _image_env(root)["MVM_AGENT_UID"] == "5000"
    assert "mvm-agent:x:5000:5000:" in (root / "etc/passwd").read_text()
    # What `mvmctl status` prints when the guest's /proc agrees, and when it does not.
    declared = declared_uids(json.loads((root / "etc/mvm/mvm-meta.json").read_text()))
    ok = {"agent": {"pid": 7, "uid": 5000, "euid": 5000, "suid": 5000, "fsuid": 5000},
          "entrypoint": {"pid": 9, "uid": 1000, "euid": 1000, "suid": 1000, "fsuid": 1000},
          "services": {}}  # fmt: skip
    assert uid_check_line(declared, ok) == "uids: agent 5000 (ok), entrypoint 1000 (ok)"
    bad = {**ok, "agent": {**ok["agent"], "uid": 990, "euid": 990, "suid": 990, "fsuid": 990}}
    assert uid_check_line(declared, bad) == (
        "uids: agent 5000 (MISMATCH: agent pid 7 runs as uid 990), entrypoint 1000 (ok)"
    )
    seed_outcome.works("agent uid 5000 in passwd, image.env and meta; status cross-check")
