"""A detached VM's supervisor started before the VM is known, so its imports overlap
the command's own work.

``mvmctl up`` spends ~0.3 s resolving the project, the hypervisor and the image before
it knows the request; the shim, a fresh Python process, spends ~0.4 s importing the
engine before it can boot anything. Started first, the shim imports while the command
works, then blocks on a request pipe; ``send`` hands it the shim arguments and the log
it must write to. ``bench up`` measures what this saves.

A warm shim that is never sent a request (the command failed, or Ctrl-C) has done
nothing but import: ``close`` kills and reaps it, so none outlives its command (and a
refused ``up`` does not wait for imports it will never use).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from mvm.engine.base.paths import CHILD_UMASK, ensure_private_dir, mvm_home
from mvm.engine.base.settings import child_environ

_SHIM = (sys.executable, "-P", "-m", "mvm.engine.shim")


_SHIM = (sys.executable, "-P", "-m", "mvm.engine.shim")


class WarmShim:
    """A shim process waiting for its request on a pipe (see the module docstring)."""

    def __init__(self) -> None:
        tmp_dir = mvm_home() / "tmp"
        ensure_private_dir(tmp_dir)
        # until it is told its VM, the shim writes (import errors, if any) here
        fd, early = tempfile.mkstemp(prefix="shim-", suffix=".log", dir=tmp_dir)
        self.early_log = Path(early)
        self.ready_read, ready_write = os.pipe()
        request_read, self._request_write = os.pipe()
        try:
            # -P: ./mvm of a checkout must not shadow the installed package (detached.py)
            self.proc = subprocess.Popen(
                [*_SHIM, "--warm", str(ready_write), str(request_read)],
                umask=CHILD_UMASK,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                pass_fds=(ready_write, request_read),
                env=child_environ(),
                start_new_session=True,
                close_fds=True,
            )
        finally:
            os.close(fd)
            os.close(ready_write)
            os.close(request_read)
        self.sent = False

    def send(self, shim_args: tuple[str, ...], log_path: Path) -> None:
        """Give the shim its work: the arguments a cold shim gets on its command line."""
        message = json.dumps({"args": list(shim_args), "log": str(log_path)}) + "\n"
        self.sent = True
        try:
            with os.fdopen(self._request_write, "w") as pipe:
                pipe.write(message)
        except BrokenPipeError:  # it died importing: its words go where the caller looks
            with open(log_path, "ab") as log, open(self.early_log, "rb") as early:
                log.write(early.read())

    def close(self) -> None:
        """Unsent: kill and reap the shim (it only imported). Sent: the caller owns the
        process and the verdict pipe now."""
        if not self.sent:
            os.close(self._request_write)
            self.proc.kill()
            self.proc.wait()
            os.close(self.ready_read)
        self.early_log.unlink(missing_ok=True)
