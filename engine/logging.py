"""structlog set-up shared by every command: readable on a terminal, JSON for machines.

Exceptions become text (console) or structured data (JSON: ``exception`` is a list of
``{exc_type, exc_value, frames: [{filename, lineno, name, line}]}``, cause first), never
with local variables, which may hold secrets; then every value is scrubbed of secrets
(``engine.redaction``). An exception nobody catches goes through the same path.
"""

from __future__ import annotations

import logging
import sys
import threading
from types import TracebackType
from typing import Literal

import structlog

from engine.redaction import redact

LogFormat = Literal["console", "json"]


def configure_logging(fmt: LogFormat = "console", level: int = logging.INFO) -> None:
    """Configure structlog once per process; log lines go to stderr."""
    renderer: structlog.typing.Processor
    exceptions: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        transformer = structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        exceptions = structlog.processors.ExceptionRenderer(transformer)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        exceptions = structlog.processors.format_exc_info
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            exceptions,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(
    kind: type[BaseException], error: BaseException, trace: TracebackType | None
) -> None:
    """The interpreter's last word, as a scrubbed log line instead of a raw traceback."""
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, error, trace)
        return
    structlog.get_logger("osupgrade").critical("uncaught exception", exc_info=(kind, error, trace))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is not None:
        _log_uncaught(args.exc_type, args.exc_value, args.exc_traceback)
