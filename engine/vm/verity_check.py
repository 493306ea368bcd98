"""The host's half of verified boot: the image on disk must be the one the plan signed.

The signed ExecutionPlan carries the sealed image's dm-verity parameters and the
backend builds the guest's dm table from the plan alone. Just before that, this
check re-reads the image's ``mvm-meta.json`` and refuses the launch when its
recorded verity differs from the plan's (the meta was swapped or rewritten after
admission) or when the rootfs is too short to hold its hash tree. The guest
kernel then verifies every block it reads against the plan's root hash; a
tampered block is an I/O error logged as ``data block N is corrupted``, which
:func:`verity_corruption` finds on the console so the boot fails as E_VERITY.
"""

from __future__ import annotations

import re
from pathlib import Path

from mvm.backends.abc.types import Verity
from mvm.engine.base.errors import SecurityError
from mvm.engine.images.image import Image

_CORRUPTED = re.compile(r"device-mapper: verity: [^\n]*?(?:data|metadata) block \d+ is corrupted")


def check_image_verity(directory: Path, planned: Verity | None) -> None:
    """Raise E_VERITY_MISMATCH unless ``directory``'s recorded verity is ``planned``."""
    image = Image.load(directory)
    recorded = image.verity if image.sealed else None
    if recorded != planned:
        raise SecurityError(
            f"image {directory} records verity root hash {_show(recorded)}, "
            f"the signed plan has {_show(planned)}",
            code="E_VERITY_MISMATCH",
        )
    if planned is not None and image.rootfs.stat().st_size <= planned.hash_offset:
        raise SecurityError(
            f"{image.rootfs} has no dm-verity hash tree after byte {planned.hash_offset}",
            code="E_VERITY_MISMATCH",
        )


def _show(verity: Verity | None) -> str:
    return verity.root_hash[:16] if verity else "none"


def verity_corruption(console_log: Path) -> str | None:
    """The kernel's first dm-verity corruption line on the console, if any."""
    try:
        text = console_log.read_text(errors="replace")
    except OSError:
        return None
    found = _CORRUPTED.search(text)
    return found.group(0) if found else None
