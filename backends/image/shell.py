"""/bin/bash in an offline image when the shell entrypoint asks for it.

`entrypoint.shell = "/bin/bash"` is the seeds' dev shell, but the offline image is
busybox-only. Debian's ``bash-static`` (installed by scripts/setup) is one
self-contained binary, so it can be /bin/bash in the guest as it is. /init runs
MVM_SHELL (image.env) as the shell entrypoint and passes it to the agent, whose
``console`` request opens it on a PTY (busybox sh for command/services images).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from mvm.engine.base.errors import ConfigError
from mvm.engine.images.imagespec import ImageSpec

BASH = "/bin/bash"
BASH_STATIC = Path("/bin/bash-static")


class _TreeLike(Protocol):
    def copy(self, guest: str, source: Path, mode: int) -> None: ...


def _spec_provides(spec: ImageSpec, path: str) -> bool:
    return (
        path in spec.extra_files
        or path in spec.host_files
        or any(str(p) == path or path.startswith(f"{p}/") for p in spec.packages)
    )


def bash_provided(program: str, spec: ImageSpec, bash: Path = BASH_STATIC) -> bool:
    """True if /bin/bash will come from bash-static (for the entrypoint check)."""
    return program == BASH == spec.shell and bash.is_file()


def add_console_shell(tree: _TreeLike, spec: ImageSpec, bash: Path = BASH_STATIC) -> None:
    """Bring /bin/bash from bash-static if the shell is bash and the spec has none."""
    if spec.shell != BASH or _spec_provides(spec, BASH):
        return
    if not bash.is_file():
        raise ConfigError(
            f"entrypoint.shell {BASH} needs {bash} on this host (Debian's bash-static)",
            code="E_SPEC_SHELL",
            hint="run ./scripts/setup (apt-get install bash-static)",
        )
    tree.copy(BASH, bash, 0o755)
