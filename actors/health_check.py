"""HealthCheck: the host's view of one guest service's health.

The guest agent runs the service's ``healthCmd`` every ``healthIntervalSecs``
(inside the guest, so checks see what the service sees); this actor polls the
agent's verdicts, applies thresholds so one slow probe does not flap the state,
publishes ``health.changed`` events, records the state for ``mvmctl ls``, and
applies the policy: restart the service (through /init) or fail so the VM's
supervisor restarts the VM.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Literal

import anyio
import anyio.abc
import attrs

from mvm.actors.port_forward import AgentSource
from mvm.engine.base.errors import ActorFailed, MvmError
from mvm.engine.base.log import get_logger
from mvm.engine.runtime.actor import Actor
from mvm.engine.runtime.events import Event, EventBus, EventKind

log = get_logger("mvm.health")

HealthState = Literal["healthy", "unhealthy", "unknown"]
OnChange = Callable[[str, HealthState], Awaitable[None]]


RestartVmFn = Callable[[str], Awaitable[None]]
"""Asks the VM that owns the check to restart (the reason is logged and recorded)."""


@attrs.frozen
class HealthPolicy:
    """Thresholds count consecutive agent verdicts; the action runs on turning unhealthy.

    The guest agent runs the checks and pushes ``health_changed``; the host polls at
    ``poll_interval_s`` only while a verdict is pending (unknown, or failing below the
    threshold) and otherwise every ``idle_poll_s`` as a safety net, so a thousand
    healthy services cost the host next to nothing."""

    unhealthy_after: int = 2
    healthy_after: int = 1
    poll_interval_s: float = 1.0
    idle_poll_s: float = 30.0
    action: Literal["none", "restart-service", "restart-vm"] = "none"


@attrs.define
class HealthTracker:
    """Pure threshold logic, separate from I/O so it is testable in isolation."""

    policy: HealthPolicy
    state: HealthState = "unknown"
    _bad: int = 0
    _good: int = 0
    _last_checked: int | None = None

    @property
    def settled(self) -> bool:
        """No verdict pending: only a push from the agent can change the state now."""
        return self.state == "unhealthy" or (self.state == "healthy" and self._bad == 0)

    def reset(self) -> HealthState | None:
        """The agent restarted: nothing it said before counts. ``unknown`` until the new
        agent reports; returns the new state if it changed."""
        self._bad = self._good = 0
        self._last_checked = None
        if self.state == "unknown":
            return None
        self.state = "unknown"
        return self.state

    def observe(self, verdict: str, checked_uptime_ms: int | None) -> HealthState | None:
        """Feed one agent verdict; returns the new state if it changed."""
        if checked_uptime_ms is not None and checked_uptime_ms == self._last_checked:
            return None  # the agent has not run the check again since we last looked
        self._last_checked = checked_uptime_ms
        if verdict == "healthy":
            self._good, self._bad = self._good + 1, 0
            if self.state != "healthy" and self._good >= self.policy.healthy_after:
                self.state = "healthy"
                return self.state
        elif verdict == "unhealthy":
            self._bad, self._good = self._bad + 1, 0
            if self.state != "unhealthy" and self._bad >= self.policy.unhealthy_after:
                self.state = "unhealthy"
                return self.state
        return None


class HealthCheck(Actor[None]):
    def __init__(
        self,
        vm: str,
        service: str,
        agent: AgentSource,
        *,
        bus: EventBus,
        policy: HealthPolicy | None = None,
        on_change: OnChange | None = None,
        restart_vm: RestartVmFn | None = None,
    ) -> None:
        super().__init__(f"vm/{vm}/health/{service}")
        self._restart_vm = restart_vm
        self.vm = vm
        self.service = service
        self._agent = agent
        self._bus = bus
        self.policy = policy or HealthPolicy()
        self.tracker = HealthTracker(self.policy)
        self._on_change = on_change
        self.restarts = 0
        self._agent_restarts_seen = 0

    @property
    def state(self) -> HealthState:
        return self.tracker.state

    async def run(
        self, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            await self._poll_once()
            wait = self.policy.idle_poll_s if self.tracker.settled else self.policy.poll_interval_s
            with anyio.move_on_after(wait):
                try:
                    client = await self._agent.client(timeout=wait)
                except MvmError:
                    continue
                if client.closed:
                    # The link is gone but its actor has not cleared it yet. Nothing in
                    # this loop checkpoints on a closed client, so without this pause it
                    # spun forever and starved every task of the engine (the VMM
                    # watcher, the agent actor, signal handlers) once a guest powered off.
                    await anyio.sleep(self.policy.poll_interval_s)
                    continue
                await client.wait_health_change(self.service)

    async def _poll_once(self) -> None:
        try:
            client = await self._agent.client(timeout=self.policy.poll_interval_s * 5)
            restarted = client.restarts != self._agent_restarts_seen
            self._agent_restarts_seen = client.restarts
            if restarted and (reset := self.tracker.reset()) is not None:
                await self._publish(reset, None)
            report = (await client.health()).get(self.service, {})
        except MvmError as exc:
            log.debug("health.poll_failed", vm=self.vm, service=self.service, code=exc.code)
            return
        checked = report.get("checked_uptime_ms")
        changed = self.tracker.observe(
            str(report.get("status", "unknown")), int(checked) if checked is not None else None
        )
        if changed is None:
            return
        await self._publish(changed, report.get("rc"))
        if changed == "unhealthy":
            await self._act()

    async def _publish(self, changed: HealthState, rc: object) -> None:
        self._bus.publish(
            Event(
                kind=EventKind.HEALTH_CHANGED,
                source=self.name,
                vm=self.vm,
                data={"service": self.service, "status": changed, "rc": rc},
            )
        )
        if self._on_change is not None:
            await self._on_change(self.service, changed)

    async def _act(self) -> None:
        if self.policy.action == "restart-service":
            self.restarts += 1
            self._bus.publish(
                Event(
                    kind=EventKind.HEALTH_RESTART_SERVICE,
                    source=self.name,
                    vm=self.vm,
                    data={"service": self.service, "restarts": self.restarts},
                )
            )
            agent = await self._agent.client()
            await agent.service(self.service, "restart")
        elif self.policy.action == "restart-vm" and self._restart_vm is not None:
            # The VM restarts itself (stop, boot again under the same name and ports);
            # this actor ends with it, so there is nothing more to do here.
            await self._restart_vm(f"service {self.service} is unhealthy")
        elif self.policy.action == "restart-vm":
            raise ActorFailed(
                f"service {self.service} of {self.vm} is unhealthy",
                code="E_UNHEALTHY",
                hint="the VM's supervisor restarts it per its policy",
            )
