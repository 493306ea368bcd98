"""Every `./scripts/setup --OPTION` that mvm's messages name exists (issue 16: the bench
plot's error named `--bench`, which setup did not have), and setup says what it does
one line per phase."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import mvm
from mvm.engine.base.error_codes import CODES

SETUP = Path(__file__).resolve().parents[2] / "scripts" / "setup"
_NAMED = re.compile(r"scripts/setup((?: --[a-z-]+)+)")


def _accepted() -> set[str]:
    case = SETUP.read_text().split('case "$arg" in', 1)[1].split("esac", 1)[0]
    return set(re.findall(r"^\s*(--[a-z-]+)\)", case, re.M))


def test_every_named_setup_option_exists() -> None:
    accepted = _accepted()
    assert {"--test", "--bench", "--editable"} <= accepted
    texts = [info.hint or "" for info in CODES.values()]
    texts += [p.read_text() for p in Path(mvm.__file__).parent.rglob("*.py")]
    named = {opt for text in texts for m in _NAMED.finditer(text) for opt in m.group(1).split()}
    assert "--bench" in named  # the plot error's hint is seen
    assert named - accepted == set()


def test_an_unknown_option_is_refused_naming_the_real_ones() -> None:
    proc = subprocess.run([str(SETUP), "--nope"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "--test" in proc.stderr and "--bench" in proc.stderr


def test_each_phase_is_announced() -> None:
    text = SETUP.read_text()
    phases = re.findall(r'^\s*say "([^"]+)"', text, re.M)
    assert len(phases) >= 6, phases
    assert any(p.startswith("installing mvm-engine") for p in phases)
    assert any(p.startswith("done") for p in phases)
