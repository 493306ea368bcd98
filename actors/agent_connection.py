"""AgentConnection: the host's one link to a VM's guest agent.

It dials the backend's agent endpoint and waits for the guest's ``hello``: that
hello *is* the VM's readiness signal (pushed by the guest, never polled). If the
link drops (guest reboot, snapshot restore, VMM hiccup) the actor fails and its
supervisor restarts it with backoff; users of ``client()`` simply wait for the
next hello, so a reconnect is invisible to them.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.abc

from mvm.backends.abc.types import AgentEndpoint
from mvm.backends.guest.client import AgentClient
from mvm.engine.base.errors import AgentError, RequestTimeout
from mvm.engine.base.log import get_logger
from mvm.engine.runtime.actor import Actor
from mvm.engine.runtime.events import Event, EventBus, EventKind

log = get_logger("mvm.agent")


class AgentConnection(Actor[None]):
    def __init__(
        self,
        vm: str,
        endpoint: AgentEndpoint,
        *,
        bus: EventBus,
        hello_timeout: float,
        vmm_exited: anyio.Event | None = None,
    ) -> None:
        super().__init__(f"vm/{vm}/agent")
        self.vm = vm
        self._endpoint = endpoint
        self._bus = bus
        self._hello_timeout = hello_timeout
        self._client: AgentClient | None = None
        self._ready = anyio.Event()
        self.hello: dict[str, Any] = {}
        self.connects = 0
        # Set by RuntimeVM before it asks the guest to power off: the link closing is
        # then the expected end, not a failure to restart from.
        self.expect_close = False
        # A link that closes because the guest powered off is followed by its VMM's
        # exit (``vmm_exited``, set by the VM's watcher): waiting for that event, not
        # for a fixed time, tells a normal end from an agent that went away.
        self._vmm_exited = vmm_exited
        self.close_grace_s = 1.0 if vmm_exited is None else 10.0

    async def run(
        self, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            with anyio.fail_after(self._hello_timeout):  # the channel may never open
                stream = await self._endpoint.connect()
            async with AgentClient.connect(stream, hello_timeout=self._hello_timeout) as client:
                self.connects += 1
                self.hello = dict(client.hello)
                self._client = client
                self._ready.set()
                self._bus.publish(
                    Event(kind=EventKind.AGENT_HELLO, source=self.name, vm=self.vm, data=self.hello)
                )
                task_status.started()
                await client.wait_closed()
                if self.expect_close:
                    log.info("agent.closed_for_poweroff", vm=self.vm)
                    await anyio.sleep_forever()  # the VM's teardown cancels us
                # A guest that powered off by itself (a command entrypoint that ended)
                # closes the link just before its VMM exits: the VM's teardown then
                # cancels us within the grace, and no failure is logged for it.
                await self._await_vmm_exit()
        except AgentError as exc:
            if exc.code != "E_AGENT_GONE":
                raise
            # The link closed before the hello: a command entrypoint that ended (and
            # powered the guest off) that early is no failure either, see below.
            await self._await_vmm_exit()
            raise
        except TimeoutError:
            raise RequestTimeout(
                f"guest agent of {self.vm} sent no hello within {self._hello_timeout:.0f}s",
                code="E_BOOT_TIMEOUT",
                hint=f"see the console log: mvmctl logs {self.vm}",
            ) from None
        finally:
            self._client = None
            self._ready = anyio.Event()
        raise AgentError(f"guest agent of {self.vm} closed the connection", code="E_AGENT_GONE")

    async def _await_vmm_exit(self) -> None:
        """After the link closed: give the VM's watcher the chance to end us (the VMM
        exited: a normal end) before this counts as the agent going away."""
        with anyio.move_on_after(self.close_grace_s):
            if self._vmm_exited is not None:
                await self._vmm_exited.wait()
            await anyio.sleep_forever()  # the VM's unwind cancels us now

    async def client(self, timeout: float = 30.0) -> AgentClient:
        """The live client, waiting (bounded) across a reconnect."""
        with anyio.move_on_after(timeout):
            while self._client is None:
                await self._ready.wait()
            return self._client
        raise RequestTimeout(f"guest agent of {self.vm} is not connected", code="E_AGENT_GONE")

    async def teardown(self) -> None:
        self._client = None
