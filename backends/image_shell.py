"""The console shell of an offline image: /etc/mvm/console, and /bin/bash when asked for.

`entrypoint.shell = "/bin/bash"` is the seeds' dev shell, but the offline image is
busybox-only. Debian's ``bash-static`` (installed by scripts/setup) is one
self-contained binary, so it can be /bin/bash in the guest as it is. /init runs
the shell named in /etc/mvm/console as the shell entrypoint, and the agent's
``console`` request opens it on a PTY (busybox sh for command/services images).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from mvm.engine.errors import ConfigError
from mvm.engine.imagespec import ImageSpec

CONSOLE_FILE = "/etc/mvm/console"
DEFAULT_SHELL = "/bin/sh"
BASH = "/bin/bash"
BASH_STATIC = Path("/bin/bash-static")


class _TreeLike(Protocol):
    def file(self, guest: str, data: bytes | str, mode: int = 0o644) -> None: ...
    def copy(self, guest: str, source: Path, mode: int) -> None: ...


def console_shell(spec: ImageSpec) -> str:
    """What console opens: the shell entrypoint's program, else busybox sh."""
    if spec.entrypoint_kind == "shell" and spec.shell:
        return spec.shell
    return DEFAULT_SHELL


def _spec_provides(spec: ImageSpec, path: str) -> bool:
    return (
        path in spec.extra_files
        or path in spec.host_files
        or any(str(p) == path or path.startswith(f"{p}/") for p in spec.packages)
    )


def add_console_shell(tree: _TreeLike, spec: ImageSpec, bash: Path = BASH_STATIC) -> None:
    """Write /etc/mvm/console; bring /bin/bash from bash-static if the shell is bash.

    Without it /init and the agent use busybox sh, so images without
    entrypoint.shell stay byte-identical to the Nix library's layout."""
    shell = console_shell(spec)
    if shell == DEFAULT_SHELL and not spec.shell:
        return
    tree.file(CONSOLE_FILE, f"{shell}\n")
    if shell != BASH or _spec_provides(spec, BASH):
        return
    if not bash.is_file():
        raise ConfigError(
            f"entrypoint.shell {BASH} needs {bash} on this host (Debian's bash-static)",
            code="E_SPEC_SHELL",
            hint="run ./scripts/setup (apt-get install bash-static)",
        )
    tree.copy(BASH, bash, 0o755)
