"""mvm's benchmark harness (installed as ``mvm.bench``; run via ``mvmctl bench``).

Each benchmark measures a baseline in the same run (bare QEMU for boot, direct
loopback for forwarding), reports medians and ratios, and writes JSON with the
host, versions and raw samples so results can be compared across machines
(``mvmctl bench compare``) and plotted (``--plot``).
"""
