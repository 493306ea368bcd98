"""A virtio-serial stand-in for the stub agent: the host side never closes.

The host dials the relay; the relay dials the agent (TCP) and copies bytes both
ways. When the agent side ends (the agent died), the relay keeps the host side open
and redials until a restarted agent accepts, exactly as a virtio-serial port stays
open across a guest agent restart. The new agent's unsolicited ``hello`` then
reaches the host on the same link, which is the case issue 15 measured.
"""

from __future__ import annotations

import anyio
import anyio.abc


class SerialRelay:
    def __init__(self, agent_port: int) -> None:
        self.agent_port = agent_port
        self.agent_links = 0
        self.port = 0
        self._listener: anyio.abc.SocketListener | None = None

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        self.port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
        task_status.started(self.port)
        await listener.serve(self._host)

    async def _dial_agent(self) -> anyio.abc.SocketStream:
        while True:
            try:
                return await anyio.connect_tcp("127.0.0.1", self.agent_port)
            except OSError:
                await anyio.sleep(0.01)

    async def _host(self, host: anyio.abc.SocketStream) -> None:
        async with host:
            while True:
                agent = await self._dial_agent()
                self.agent_links += 1
                async with agent, anyio.create_task_group() as tg:

                    async def to_agent(agent: anyio.abc.SocketStream = agent) -> None:
                        try:
                            while True:
                                await agent.send(await host.receive())
                        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                            pass

                    tg.start_soon(to_agent)
                    try:
                        while True:
                            await host.send(await agent.receive())
                    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                        pass  # the agent went away: redial, host side stays open
                    tg.cancel_scope.cancel()
