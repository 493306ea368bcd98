"""Typed messages that can cross a process or wire boundary.

Messages are frozen ``attrs`` classes. Inside one process they travel as objects;
to leave it (the detached shim's control socket, the state store, a test
fixture) they go through :func:`to_wire` / :func:`from_wire`, which use one
shared strict ``cattrs`` converter and a :class:`MessageRegistry` mapping a stable
``"type"`` tag to each class. The registry is explicit so that a peer can only
make us build classes we opted in, and unknown tags or fields are refused with a
coded ``MessageError`` instead of being silently ignored.

    registry = MessageRegistry()

    @registry.register("vm.stop")
    @attrs.frozen
    class StopVm:
        reason: str = "requested"

    from_wire(to_wire(StopVm("bye")), registry) == StopVm("bye")
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError

from mvm.engine.base.errors import MessageError
from mvm.engine.runtime.actor import Reply

T = TypeVar("T")

TYPE_KEY = "type"

converter = cattrs.Converter(forbid_extra_keys=True)
"""The one converter every message goes through (strict: unknown keys are errors)."""


class MessageRegistry:
    def __init__(self) -> None:
        self._by_tag: dict[str, type[Any]] = {}
        self._by_class: dict[type[Any], str] = {}

    def register(self, tag: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: make an attrs class a wire message under ``tag``."""

        def decorate(cls: type[T]) -> type[T]:
            self.add(cls, tag)
            return cls

        return decorate

    def add(self, cls: type[Any], tag: str) -> None:
        if not attrs.has(cls):
            raise MessageError(f"{cls.__qualname__} is not an attrs class", code="E_MESSAGE_CLASS")
        names = {field.name for field in attrs.fields(cls)}
        if TYPE_KEY in names:
            raise MessageError(
                f"{cls.__qualname__} has a field named {TYPE_KEY!r}, reserved for the tag",
                code="E_MESSAGE_CLASS",
            )
        if self._by_tag.get(tag, cls) is not cls or self._by_class.get(cls, tag) != tag:
            raise MessageError(
                f"message tag {tag!r} or class {cls.__qualname__} is already registered",
                code="E_MESSAGE_DUPLICATE",
            )
        self._by_tag[tag] = cls
        self._by_class[cls] = tag

    def tag_of(self, cls: type[Any]) -> str | None:
        return self._by_class.get(cls)

    def lookup(self, tag: str) -> type[Any] | None:
        return self._by_tag.get(tag)

    def __contains__(self, item: object) -> bool:
        return item in self._by_tag or item in self._by_class

    def tags(self) -> list[str]:
        return sorted(self._by_tag)


default_registry = MessageRegistry()
"""Registry for the engine's own messages."""


def to_wire(msg: Any, registry: MessageRegistry | None = None) -> dict[str, Any]:
    """``msg`` as a JSON-able dict with its ``"type"`` tag.

    Messages carrying a :class:`Reply` cannot leave the process (a reply channel
    is an in-memory stream); across a wire, answers are correlated by id instead.
    """
    cls = type(msg)
    tag = (registry or default_registry).tag_of(cls)
    if tag is None:
        raise MessageError(
            f"{cls.__qualname__} is not a registered message type", code="E_MESSAGE_UNKNOWN_TYPE"
        )
    for field in attrs.fields(cls):
        if isinstance(getattr(msg, field.name), Reply):
            raise MessageError(
                f"{cls.__qualname__}.{field.name} is a reply channel: it cannot cross a wire",
                code="E_MESSAGE_NOT_WIRE",
            )
    data = converter.unstructure(msg)
    assert isinstance(data, dict)
    return {TYPE_KEY: tag, **data}


def from_wire(data: Mapping[str, Any], registry: MessageRegistry | None = None) -> Any:
    """Rebuild a message from :func:`to_wire` output, refusing anything not registered."""
    if not isinstance(data, Mapping):
        raise MessageError(
            f"a message must be an object, not {type(data).__name__}", code="E_MESSAGE_INVALID"
        )
    tag = data.get(TYPE_KEY)
    if not isinstance(tag, str):
        raise MessageError(f"message has no string {TYPE_KEY!r} tag", code="E_MESSAGE_INVALID")
    cls = (registry or default_registry).lookup(tag)
    if cls is None:
        raise MessageError(f"unknown message type {tag!r}", code="E_MESSAGE_UNKNOWN_TYPE")
    body = {key: value for key, value in data.items() if key != TYPE_KEY}
    try:
        return converter.structure(body, cls)
    except Exception as exc:  # cattrs raises several kinds; all mean "bad message"
        raise _message_error(tag, exc) from exc


def _message_error(tag: str, exc: Exception) -> MessageError:
    extra = _extra_keys(exc)
    if extra:
        return MessageError(
            f"message {tag!r} has unknown field(s): {', '.join(sorted(extra))}",
            code="E_MESSAGE_UNKNOWN_FIELD",
        )
    detail = (
        "; ".join(cattrs.transform_error(exc))
        if isinstance(exc, ClassValidationError)
        else (repr(exc))
    )
    return MessageError(f"message {tag!r} is invalid: {detail}", code="E_MESSAGE_INVALID")


def _extra_keys(exc: BaseException) -> set[str]:
    if isinstance(exc, ForbiddenExtraKeysError):
        return set(exc.extra_fields)
    if isinstance(exc, BaseExceptionGroup):
        return {key for sub in exc.exceptions for key in _extra_keys(sub)}
    return set()
