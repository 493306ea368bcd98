"""Fixed names the image builder's parts share: the host's busybox and the guest layout.

Validation (``image_checks``) reserves these paths and the staging tree
(``image_tree``) writes them; both read them from here, so neither has to import
the other's module for a constant and the two cannot drift apart. Changing a
value here changes every image: bump ``image_key.RECIPE_VERSION`` with it.
"""

from __future__ import annotations

from pathlib import Path

BUSYBOX = Path("/bin/busybox")
AGENT_PATH = "/usr/bin/mvm-agent"
SETUP_HINT = "run ./scripts/setup"
BASE_DIRS = ("/proc", "/sys", "/dev", "/run", "/tmp", "/var", "/mnt", "/root", "/home", "/srv")
# PID 1 is /init. Without busybox's init the kernel's fallback (init= missing from the
# command line) ends in /bin/sh on the console, which is easy to spot.
_SKIP_APPLETS = frozenset({"busybox", "init", "linuxrc"})
