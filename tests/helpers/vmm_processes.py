"""The VMM processes of one VM, found by the run-dir tag every VMM carries in its
environment (``MVM_VMM_RUN_DIR``), as conftest's leak sweep finds them: the fleet tests
count them to prove a replaced VM left no duplicate behind."""

from __future__ import annotations

from pathlib import Path


def vmm_pids(home: Path, name: str, program: bytes | None = None) -> list[int]:
    """Pids whose environment tags them as VM ``name``'s under ``home``; with
    ``program``, only those whose argv[0] contains it (e.g. b"qemu-system")."""
    tag = f"MVM_VMM_RUN_DIR={home}/vms/{name}\0".encode()
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if tag not in (entry / "environ").read_bytes() + b"\0":
                continue
            argv0 = (entry / "cmdline").read_bytes().split(b"\0")[0]
            if program is not None and program not in argv0:
                continue
        except OSError:
            continue
        out.append(int(entry.name))
    return out
