"""Which accelerator QEMU gets, and the host facts the guest kernel needs under TCG.

``MVM_ACCEL`` or an explicit request wins; ``Accel.AUTO`` picks KVM only when the
shared KVM test boot (``mvm.backends.vmm.kvm_probe``) says a guest really runs.

TCG guests need ``tsc_early_khz=<host TSC kHz>``: without it the kernel's early
TSC calibration against emulated timers sometimes never finishes (20-40 % of
microvm boots hang). ``host_tsc_khz`` finds the host's calibrated value.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

from mvm.backends.abc.types import Accel
from mvm.backends.vmm import kvm_verdict
from mvm.engine.base.errors import ConfigError
from mvm.engine.base.log import get_logger
from mvm.engine.base.settings import current_settings

log = get_logger("mvm.qemu.accel")

_MHZ_PATTERNS = (
    re.compile(r"tsc: Refined TSC clocksource calibration: (\d+\.\d+) MHz"),
    re.compile(r"tsc: Detected (\d+\.\d+) MHz"),
)


# -- host TSC ------------------------------------------------------------------------------


def _kernel_log() -> str:
    """The host kernel's boot messages; dmesg may be restricted, the journal may be absent."""
    for argv in (["dmesg"], ["journalctl", "-k", "-b", "--no-pager", "-q"]):
        if shutil.which(argv[0]) is None:
            continue
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
            if out.returncode == 0 and "tsc" in out.stdout:
                return out.stdout
    return ""


def tsc_khz_from_kernel_log(text: str) -> int | None:
    """Refined calibration beats the early detection: the early value can be off by MHz."""
    for pattern in _MHZ_PATTERNS:
        found = pattern.findall(text)
        if found:
            return round(float(found[-1]) * 1000)
    return None


def tsc_khz_from_cpuinfo(text: str) -> int | None:
    """Last resort: the nominal GHz in the model name, else the (drifting) ``cpu MHz``."""
    model = re.search(r"^model name\s*:.*?@\s*(\d+(?:\.\d+)?)GHz", text, re.MULTILINE)
    if model:
        return round(float(model[1]) * 1_000_000)
    mhz = re.search(r"^cpu MHz\s*:\s*(\d+(?:\.\d+)?)", text, re.MULTILINE)
    if mhz:
        return round(float(mhz[1]) * 1000)
    return None


@functools.cache
def host_tsc_khz() -> int:
    """The host TSC frequency in kHz (cached for the process; it cannot change)."""
    sysfs = Path("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
    with contextlib.suppress(OSError, ValueError):
        khz = int(sysfs.read_text().strip())
        if khz > 0:
            return khz
    khz_or_none = _remembered_khz()
    if khz_or_none is not None:
        return khz_or_none
    khz_or_none = tsc_khz_from_kernel_log(_kernel_log())
    if khz_or_none is None:
        with contextlib.suppress(OSError):
            khz_or_none = tsc_khz_from_cpuinfo(Path("/proc/cpuinfo").read_text())
    if khz_or_none is not None:
        _remember_khz(khz_or_none)
    if khz_or_none is None:
        raise ConfigError(
            "cannot determine the host TSC frequency",
            code="E_HOST_TSC",
            hint="set MVM_ACCEL=kvm on a KVM host, or check /proc/cpuinfo",
        )
    log.debug("qemu.tsc_khz", khz=khz_or_none)
    return khz_or_none


# Reading the kernel log forks dmesg (~60 ms of every detached boot, whose supervisor is a
# new process): the value is kept per host boot in the cache, keyed by the boot id.
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _tsc_cache() -> Path:
    from mvm.engine.base.paths import cache_dir

    return cache_dir() / "host" / "tsc-khz"


def _remembered_khz() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        boot_id, khz = _tsc_cache().read_text().split()
        if boot_id == _BOOT_ID.read_text().strip() and int(khz) > 0:
            return int(khz)
    return None


def _remember_khz(khz: int) -> None:
    with contextlib.suppress(OSError):
        path = _tsc_cache()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(f"{_BOOT_ID.read_text().strip()} {khz}\n")
        os.replace(tmp, path)


def resolve_accel(requested: Accel) -> Accel:
    """``MVM_ACCEL`` (kvm|tcg, checked once in the settings: E_ACCEL) wins; then an
    explicit request; AUTO probes."""
    forced = current_settings().accel
    if forced is not Accel.AUTO:
        requested = forced
    if requested is not Accel.AUTO:
        return requested
    works, _ = kvm_verdict()
    return Accel.KVM if works else Accel.TCG
