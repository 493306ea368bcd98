"""Networked mode: a TAP device per VM on a bridge with NAT to the outside.

Rootless port forwarding over the agent is the default and needs none of this;
``--net tap`` gives the guest a real NIC: an address from a pool (default
172.16.0.0/24 on bridge ``br-mvm``, gateway .1, as upstream mvm does), a TAP
device enslaved to the bridge, and an nftables masquerade rule for the subnet.

Leases are files created with O_EXCL under ``$MVM_HOME/net/leases`` so two
engines in two processes can never hand out the same address, and a lease left
by a crashed engine is found and released by reconcile. Everything is undone at
teardown: the TAP is deleted, the lease file removed, and the bridge and NAT
table go away with the last lease.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

import anyio
import attrs

from mvm.engine.base.errors import BackendError, ConfigError, ConflictError
from mvm.engine.base.log import get_logger
from mvm.engine.base.paths import mvm_home
from mvm.engine.base.settings import current_settings

log = get_logger("mvm.net")

NFT_TABLE = "mvm"


@attrs.frozen
class NetConfig:
    bridge: str = "br-mvm"
    subnet: str = "172.16.0.0/24"

    @classmethod
    def from_env(cls) -> NetConfig:
        config = cls(
            bridge=current_settings().net_bridge,
            subnet=current_settings().net_subnet,
        )
        try:
            net = ipaddress.IPv4Network(config.subnet)
        except ValueError as exc:
            raise ConfigError(f"MVM_NET_SUBNET: {exc}", code="E_NET_CONFIG") from None
        if net.num_addresses < 8:
            raise ConfigError(f"subnet {net} is too small", code="E_NET_CONFIG")
        if not 1 <= len(config.bridge) <= 15:
            raise ConfigError("MVM_NET_BRIDGE must be 1..15 characters", code="E_NET_CONFIG")
        return config

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.network.network_address + 1


@attrs.frozen
class Lease:
    vm: str
    ip: str
    prefix: int
    gateway: str
    tap: str
    mac: str

    @property
    def kernel_arg(self) -> str:
        """Read by /init to configure eth0 (no kernel IP autoconfig needed)."""
        return f"mvm.net={self.ip}/{self.prefix},{self.gateway}"


def leases_dir() -> Path:
    return mvm_home() / "net" / "leases"


def _random_mac() -> str:
    tail = secrets.token_bytes(3)
    return "52:54:00:" + ":".join(f"{b:02x}" for b in tail)


def _claim_address(vm: str, config: NetConfig) -> Lease:
    root = leases_dir()
    root.mkdir(parents=True, exist_ok=True)
    net = config.network
    for offset in range(2, net.num_addresses - 1):
        ip = net.network_address + offset
        path = root / str(ip)
        lease = Lease(
            vm, str(ip), net.prefixlen, str(config.gateway), f"mvmt{offset}", _random_mac()
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(attrs.asdict(lease), fh)
        return lease
    raise ConflictError(
        f"no free address left in {net}",
        code="E_NET_POOL_EXHAUSTED",
        hint="stop VMs or set MVM_NET_SUBNET to a larger subnet",
    )


def _nft(script: str) -> None:
    try:
        subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True, capture_output=True)
    except FileNotFoundError:
        raise BackendError(
            "nft is not installed", code="E_NET_NFT", hint="install nftables: run ./scripts/setup"
        ) from None
    except subprocess.CalledProcessError as exc:
        raise BackendError(
            f"nftables rejected the NAT rules: {exc.stderr.strip()}", code="E_NET_NFT"
        ) from None


def _ensure_bridge_and_nat(config: NetConfig) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=config.bridge)
        if not found:
            ipr.link("add", ifname=config.bridge, kind="bridge")
            found = ipr.link_lookup(ifname=config.bridge)
        index = found[0]
        have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=index)}
        if str(config.gateway) not in have:
            ipr.addr(
                "add", index=index, address=str(config.gateway), prefixlen=config.network.prefixlen
            )
        ipr.link("set", index=index, state="up")
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    net = config.network
    _nft(
        f"add table ip {NFT_TABLE}\n"
        f"flush table ip {NFT_TABLE}\n"
        f"add chain ip {NFT_TABLE} postrouting "
        "{ type nat hook postrouting priority srcnat; policy accept; }\n"
        f"add rule ip {NFT_TABLE} postrouting ip saddr {net} ip daddr != {net} masquerade\n"
    )


def _create_tap(lease: Lease, config: NetConfig, *, bridged: bool) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for stale in ipr.link_lookup(ifname=lease.tap):
            ipr.link("del", index=stale)
        ipr.link("add", ifname=lease.tap, kind="tuntap", mode="tap")
        tap = ipr.link_lookup(ifname=lease.tap)[0]
        ipr.link("set", index=tap, state="up")
        if bridged:
            _enslave(ipr, lease, config)


def _enslave(ipr: Any, lease: Lease, config: NetConfig) -> None:
    tap = ipr.link_lookup(ifname=lease.tap)[0]
    bridge = ipr.link_lookup(ifname=config.bridge)[0]
    ipr.link("set", index=tap, master=bridge)


def _join_bridge(lease: Lease, config: NetConfig) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        _enslave(ipr, lease, config)


def _delete_tap(tap: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for index in ipr.link_lookup(ifname=tap):
            ipr.link("del", index=index)


def _teardown_shared(config: NetConfig) -> None:
    """With no lease left, remove the bridge and the NAT table too."""
    from pyroute2 import IPRoute

    if any(leases_dir().iterdir()):
        return
    with IPRoute() as ipr:
        for index in ipr.link_lookup(ifname=config.bridge):
            ipr.link("del", index=index)
    with contextlib.suppress(BackendError):
        _nft(f"delete table ip {NFT_TABLE}\n")


def _acquire(vm: str, config: NetConfig, bridged: bool) -> Lease:
    lease = _claim_address(vm, config)
    try:
        _ensure_bridge_and_nat(config)
        _create_tap(lease, config, bridged=bridged)
    except BaseException:
        _release(lease, config)
        raise
    log.info("net.acquired", vm=vm, ip=lease.ip, tap=lease.tap)
    return lease


def _release(lease: Lease, config: NetConfig) -> None:
    _delete_tap(lease.tap)
    (leases_dir() / lease.ip).unlink(missing_ok=True)
    _teardown_shared(config)
    log.info("net.released", vm=lease.vm, ip=lease.ip, tap=lease.tap)


async def acquire(vm: str, config: NetConfig | None = None, *, bridged: bool = True) -> Lease:
    """An address, a MAC and a TAP for ``vm``. A restored clone asks for its TAP
    unbridged: it wakes up with its source's MAC and address, and joins the bridge
    (``join_bridge``) only once re-addressed, so the bridge never learns the
    source's MAC on the clone's port."""
    try:
        return await anyio.to_thread.run_sync(_acquire, vm, config or NetConfig.from_env(), bridged)
    except OSError as exc:
        raise BackendError(
            f"setting up the TAP network failed: {exc}",
            code="E_NET_SETUP",
            hint="networked mode needs root (CAP_NET_ADMIN)",
        ) from None


async def join_bridge(lease: Lease, config: NetConfig | None = None) -> None:
    try:
        await anyio.to_thread.run_sync(_join_bridge, lease, config or NetConfig.from_env())
    except (OSError, IndexError) as exc:
        raise BackendError(
            f"attaching {lease.tap} to the bridge failed: {exc}", code="E_NET_SETUP"
        ) from None


async def release(lease: Lease, config: NetConfig | None = None) -> None:
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(_release, lease, config or NetConfig.from_env())


def leases_of(vm: str) -> list[Lease]:
    """Leases a VM holds (reconcile uses this to free those of VMs that died)."""
    root = leases_dir()
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if data.get("vm") == vm:
            found.append(Lease(**data))
    return found
