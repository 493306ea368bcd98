"""The original product's published Python SDK (PyPI ``mvm``) in a venv of its own.

Built once per machine and version under ``$MVM_CACHE/test-venvs/mvm-<version>`` (a
lock serialises concurrent sessions; a marker written last says the venv is complete),
because pip from PyPI is the slow part. Tests skip only when PyPI cannot be reached
(pip's error says so); any other install failure fails them.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mvm.engine.base.paths import cache_dir

ORIGINAL_VERSION = "0.15.1"
_UNREACHABLE = (
    "connection",
    "network is unreachable",
    "temporary failure",
    "name resolution",
)


def venv_dir(version: str = ORIGINAL_VERSION) -> Path:
    return cache_dir() / "test-venvs" / f"mvm-{version}"


def original_python(version: str = ORIGINAL_VERSION) -> Path:
    """The venv's python with ``mvm==version`` from PyPI installed (built if missing)."""
    venv = venv_dir(version)
    python = venv / "bin" / "python"
    marker = venv / ".mvm-test-venv-complete"
    if marker.is_file():
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".mvm-{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file():  # another session built it meanwhile
            return python
        shutil.rmtree(venv, ignore_errors=True)  # a half-built one from a killed run
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        pip = subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
             f"mvm=={version}"],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        if pip.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            why = [
                ln for ln in pip.stderr.splitlines() if any(w in ln.lower() for w in _UNREACHABLE)
            ]
            if why:  # pip's retry warnings name the connection failure
                pytest.skip(f"PyPI unreachable, cannot install mvm=={version}: {why[0].strip()}")
            pytest.fail(f"pip install mvm=={version} failed: {pip.stderr}")
        marker.write_text(f"mvm=={version}\n")
    return python


def emit(python: Path, entry: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """The original SDK's own emit mechanism (ADR-0002): ``python -m mvm entry.py``
    with ``MVM_IR_OUT`` naming the file, run in the entry's directory."""
    env = {**os.environ, "MVM_IR_OUT": str(out)}
    return subprocess.run(
        [str(python), "-m", "mvm", str(entry)],
        cwd=entry.parent, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
