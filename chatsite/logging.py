"""Logging set up once: a request id on every line, JSON lines on demand, secrets scrubbed.

Code never logs passwords, keys or message text in the first place; RedactFilter is the net
under that rule, masking anything shaped like a provider secret or a session cookie.
"""

import contextvars
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Hashable

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

_SECRET_PATTERNS = [
    re.compile(r"sk-[A-Za-z0-9_\-]{8,}"),  # OpenAI / Anthropic style keys
    re.compile(
        r"(?i)(sessionid|csrftoken|csrfmiddlewaretoken|x-api-key|api[_-]?key|password\d?|passwd|secret|authorization|cookie)"
        r"([\"']?\s*[:=]\s*[\"']?)([^\s\"',;&]+)"
    ),
    re.compile(r"(?i)bearer\s+[A-Za-z0-9._\-]+"),
]


def redact(text: str) -> str:
    text = _SECRET_PATTERNS[0].sub("sk-***", text)
    text = _SECRET_PATTERNS[1].sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    return _SECRET_PATTERNS[2].sub("Bearer ***", text)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            # django.request logs a failed response after the middleware has returned (and the
            # context variable is reset), but it passes the request along: take the id from it.
            request = getattr(record, "request", None)
            record.request_id = getattr(request, "request_id", None) or request_id_var.get()
        return True


class RedactFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        return True


def _connection_failure(exc_info) -> BaseException | None:
    """The connection error (refused, reset, timed out) behind a logged exception, if that is what
    it is, following the chain of causes."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    exc = exc_info[1] if exc_info else None
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError | RedisConnectionError | RedisTimeoutError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


REPEAT_SECONDS = 60.0  # a condition that goes on is told again at most this often


class RepeatThrottle:
    """At most one log line per REPEAT_SECONDS about a condition that goes on (per `kind`),
    counting the ones left out so the next line can say how many. For conditions that repeat
    every second or every probe for as long as they last: a line each would bury the log."""

    def __init__(self, *, seconds: float = REPEAT_SECONDS, clock: Callable[[], float] | None = None) -> None:
        self.seconds = seconds
        # Read at each call, so that a test can move this module's clock on.
        self._clock = clock or (lambda: time.monotonic())
        self._lock = threading.Lock()
        self._told: dict[Hashable, tuple[float, int]] = {}  # kind -> (when last told, left out since)

    def tell(self, kind: Hashable = None) -> int | None:
        """None: leave this one out (it is counted). Otherwise tell it now, with the number
        returned: how many were left out since the last one told."""
        now = self._clock()
        with self._lock:
            told_at, left_out = self._told.get(kind, (None, 0))
            if told_at is not None and now - told_at < self.seconds:
                self._told[kind] = (told_at, left_out + 1)
                return None
            self._told[kind] = (now, 0)
        return left_out

    def reset(self, kind: Hashable = None) -> None:
        """The condition changed: the next one is told at once."""
        with self._lock:
            self._told.pop(kind, None)


class ExpectedConditionsFilter(logging.Filter):
    """Conditions any deployment meets are told in one line, without a traceback.

    channels_redis' pub/sub layer retries reading from Redis once a second and logs each failure
    with its traceback (some 45 lines): while Redis restarts or is down, that filled the log with
    thousands of lines a minute and buried everything else. Such a failure is one WARNING line,
    repeated at most once a minute (with how many were left out) for as long as it lasts. So is
    a socket Daphne could not open for the same reason (each chat tab retries every few seconds).

    Django logs every request it refuses as suspicious (above all a Host the site does not serve,
    which scanners and load balancers probing by address send all day) as an ERROR with the
    traceback of its own request handling. The message says what happened: one WARNING line.
    """

    def __init__(self) -> None:
        super().__init__()
        self._repeats = RepeatThrottle()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("django.security.") and record.exc_info:
            from django.core.exceptions import SuspiciousOperation

            if isinstance(record.exc_info[1], SuspiciousOperation):
                record.levelno, record.levelname = logging.WARNING, "WARNING"
                record.exc_info = record.exc_text = None
            return True
        if record.name.startswith("channels_redis") and record.exc_info:
            failure = _connection_failure(record.exc_info)
            if failure is not None:
                return self._once_a_minute(
                    record, "channels_redis", "channel layer: Redis is unreachable (%s); retrying", failure
                )
        if record.name == "daphne.server" and record.exc_info:
            # A socket whose consumer could not subscribe to the layer: each tab retries every few
            # seconds. Only Redis's own errors: any other exception here is a bug, told in full.
            from redis.exceptions import RedisError

            failure = _connection_failure(record.exc_info)
            if isinstance(failure, RedisError):
                return self._once_a_minute(
                    record, "daphne", "sockets refused: Redis is unreachable (%s); chat tabs keep retrying", failure
                )
        return True

    def _once_a_minute(self, record: logging.LogRecord, kind: str, message: str, failure: BaseException) -> bool:
        left_out = self._repeats.tell(kind)
        if left_out is None:
            return False
        text = message % f"{type(failure).__name__}: {failure}"
        if left_out:
            text += f"; {left_out} more in the last minute"
        record.msg, record.args = text, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info = record.exc_text = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", request_id_var.get()),
            "message": record.getMessage(),
        }
        if record.exc_info or record.exc_text:
            payload["exc"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(payload, ensure_ascii=False)
