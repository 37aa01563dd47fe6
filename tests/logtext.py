"""What a log record carries, for tests that look for secrets in logs."""

import logging
import traceback


def record_text(record: logging.LogRecord) -> str:
    """Everything a record carries, whatever a formatter might print of it."""
    parts = [str(record.msg), repr(record.args)]
    try:
        parts.append(record.getMessage())
    except Exception:  # noqa: BLE001
        pass
    if record.exc_info:
        parts.append("".join(traceback.format_exception(*record.exc_info)))
    parts.append(str(record.exc_text or ""))
    parts += [repr(v) for k, v in vars(record).items() if k not in {"msg", "args", "exc_info"}]
    return "\n".join(parts)
