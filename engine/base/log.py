"""Logging: silent library default, and the setup of the CLI, the shim and embedders.

Library code logs key-value events through :func:`get_logger` and never prints. Left
alone, structlog's own default writes every line to **stdout** (a ``PrintLogger``), so an
app embedding the engine saw ~25 lines per VM on its stdout. :func:`get_logger` therefore
installs, once and only when nobody configured structlog, a default that hands every
event to the standard-library logger of the same name (``mvm.*``), where a
``NullHandler`` on ``mvm`` keeps them silent (not even Python's last-resort handler
prints warnings) until the host app configures logging (``logging.basicConfig(...)``
shows them, rendered as ``event key=value``). A host that configured structlog itself
keeps its configuration.

Programs of ours (the CLI, the detached shim, the benchmarks) call
:func:`configure_logging` once at start (calling it again simply replaces the
configuration).

structlog (with the rich library its dev renderer imports) is a quarter of a short
command's start-up, and ``mvmctl ls`` usually logs nothing. So loggers are proxies that
import structlog on their first call, and ``configure_logging`` only records its
arguments until then (or applies them at once if structlog is already loaded).
Output goes to stderr so stdout stays clean for command results and
``--json`` output. Standard-library loggers (asyncssh, httpx, ...) are routed through
the same renderer.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any, TextIO

from mvm.engine.base.errors import ConfigError

if TYPE_CHECKING:
    import structlog

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

_HANDLER_MARK = "_mvm_handler"
_ROOT_LOGGER = "mvm"


_pending: dict[str, Any] | None = None  # configure_logging's arguments, not yet applied


def _structlog() -> Any:
    """structlog, imported now; a configuration recorded before is applied first."""
    global _pending
    import structlog

    if _pending is not None:
        pending, _pending = _pending, None
        _apply(**pending)
    return structlog


def _install_library_default() -> None:
    """Route structlog through stdlib logging, silently, unless someone configured it."""
    structlog = _structlog()
    lib = logging.getLogger(_ROOT_LOGGER)
    if not any(isinstance(h, logging.NullHandler) for h in lib.handlers):
        lib.addHandler(logging.NullHandler())
    if structlog.is_configured():
        return
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,  # stdlib's level, checked before rendering
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


class _Logger:
    """The library's logger until its first use, when it becomes structlog's."""

    __slots__ = ("_name", "_real")

    def __init__(self, name: str) -> None:
        self._name = name
        self._real: Any = None

    def __getattr__(self, attr: str) -> Any:
        if self._real is None and _below_pending_level(attr):
            return _drop  # a program set a higher level: no need to load structlog for it
        if self._real is None:
            _install_library_default()
            self._real = _structlog().get_logger(self._name)
        return getattr(self._real, attr)


def _drop(*_args: Any, **_kwargs: Any) -> None:
    return None


def _below_pending_level(method: str) -> bool:
    level = LEVELS.get(method)
    return _pending is not None and level is not None and level < _pending["levelno"]


def get_logger(name: str) -> Any:
    """The library's logger ``name`` (``mvm.<area>``): structlog's, on first use, after
    making sure an unconfigured process gets the silent stdlib-routed default instead
    of stdout."""
    return _Logger(name)


class _StderrLoggerFactory:
    """Resolve ``sys.stderr`` per logger, so redirections made after configuration
    (test capture, daemonising) are honoured."""

    def __call__(self, *args: Any) -> structlog.PrintLogger:
        import structlog

        return structlog.PrintLogger(sys.stderr)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def configure_logging(*, json: bool = False, level: str = "info") -> None:
    """structlog to stderr: JSON lines (``json=True``, for machines and the shim's log
    file) or the console renderer; events below ``level`` are dropped cheaply. Applied
    when structlog is first needed (at once if it is loaded already)."""
    global _pending
    try:
        levelno = LEVELS[level.lower()]
    except KeyError:
        raise ConfigError(
            f"unknown log level {level!r}",
            code="E_LOG_LEVEL",
            hint="use one of: debug, info, warning, error, critical",
        ) from None
    if "structlog" in sys.modules:
        _pending = None
        _apply(json=json, levelno=levelno)
    else:
        _pending = {"json": json, "levelno": levelno}


def _apply(*, json: bool, levelno: int) -> None:
    import structlog

    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor
    if json:
        renderer = structlog.processors.JSONRenderer(sort_keys=False, default=repr)
        tail: list[structlog.typing.Processor] = [
            structlog.processors.dict_tracebacks,
            renderer,
        ]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        tail = [renderer]

    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(), *tail],
        wrapper_class=structlog.make_filtering_bound_logger(levelno),
        logger_factory=_StderrLoggerFactory(),
        cache_logger_on_first_use=False,
    )

    # Foreign (stdlib) records: same renderer, one handler however often we're called.
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(handler)
    handler = _StderrHandler()
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                *shared,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *tail,
            ],
        )
    )
    handler.setLevel(levelno)
    root.addHandler(handler)
    root.setLevel(levelno)
