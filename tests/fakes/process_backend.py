"""A plugin backend for tests: the stub backend under another name, loaded through
``MVM_BACKEND_PLUGINS`` so the plugin mechanism itself is exercised."""

from __future__ import annotations

from mvm.backends.abc.types import AgentEndpoint, LaunchPlan
from mvm.backends.stub import StubBackend, TcpEndpoint, _free_port


class FakeBackend(StubBackend):
    name = "fake"


def factory() -> FakeBackend:
    return FakeBackend()


class MuteBackend(StubBackend):
    """Its VMM runs but the host dials a port nobody listens on: a boot that never
    greets, for the paths that handle a launch failing after admission."""

    name = "mute"

    def agent_endpoint(self, plan: LaunchPlan) -> AgentEndpoint:
        return TcpEndpoint(_free_port())


def mute_factory() -> MuteBackend:
    return MuteBackend()
