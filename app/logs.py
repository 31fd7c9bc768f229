"""Logging setup for every REINS process: plain text, or one JSON object per line.

Code that works on a job sets `job_context` for its duration. The JSON format then adds `job_id`, `tenant` and
`model` to every line logged inside it, by any module. REINS log messages contain no API keys and no prompts.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

_job_fields: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("reins_job_fields", default={})


@contextmanager
def job_context(job_id: str, tenant: str | None = None, model: str | None = None) -> Iterator[None]:
    """Attach job fields to every log line written inside the block."""
    fields = {"job_id": job_id}
    if tenant:
        fields["tenant"] = tenant
    if model:
        fields["model"] = model
    token = _job_fields.set(fields)
    try:
        yield
    finally:
        _job_fields.reset(token)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_job_fields.get(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "INFO", log_format: str = "text") -> None:
    """Send every logger's records to stderr in the chosen format, replacing earlier handlers."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request at INFO, which would bury the progress lines of the demo and the client.
    logging.getLogger("httpx").setLevel(logging.WARNING)
