"""Guest hardening (issue 15) without a VM: what /init's workloads inherit and what
the sealed agent binary contains.

/init starts every service and entrypoint from a background job of a
non-interactive ash, which ignores SIGINT and SIGQUIT for good; the agent's
``setpriv`` (the one door every workload goes through) must hand the program the
default dispositions back. A sealed image gets an agent compiled without the
exec/console/pty code; ``nm`` on the two real builds shows which has it.
"""

from __future__ import annotations

import signal
import subprocess

from mvm.backends.guest.build import agent_binary

SIGINT_BIT = 1 << (signal.SIGINT - 1)
SIGQUIT_BIT = 1 << (signal.SIGQUIT - 1)
SIGTERM_BIT = 1 << (signal.SIGTERM - 1)


def _ignore_like_ash() -> None:
    """What ash does to a background job (plus SIGTERM/SIGPIPE, for good measure)."""
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})


def _status_masks(argv: list[str]) -> dict[str, int]:
    out = subprocess.run(
        [*argv, "grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"],
        preexec_fn=_ignore_like_ash,  # the test process is single-threaded
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return {k: int(v, 16) for k, v in (line.split(":\t") for line in out.splitlines())}


def test_without_setpriv_the_ignored_signals_are_inherited() -> None:
    """The failure the fix is for, so the next test can fail."""
    masks = _status_masks([])
    assert masks["SigIgn"] & SIGINT_BIT and masks["SigIgn"] & SIGQUIT_BIT
    assert masks["SigBlk"] & (1 << (signal.SIGUSR1 - 1))


def test_setpriv_restores_default_dispositions_and_mask() -> None:
    for opts in (["--no-new-privs"], ["--reuid=0", "--regid=0", "--clear-groups"]):
        masks = _status_masks([str(agent_binary()), "setpriv", *opts])
        assert masks["SigIgn"] == 0, f"{opts}: SigIgn {masks['SigIgn']:#x}"
        assert masks["SigBlk"] == 0, f"{opts}: SigBlk {masks['SigBlk']:#x}"
