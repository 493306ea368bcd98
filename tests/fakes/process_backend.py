"""A plugin backend for tests: the stub backend under another name, loaded through
``MVM_BACKEND_PLUGINS`` so the plugin mechanism itself is exercised."""

from __future__ import annotations

from mvm.backends.stub import StubBackend


class FakeBackend(StubBackend):
    name = "fake"


def factory() -> FakeBackend:
    return FakeBackend()
