"""Server-sent events, decoded from the bytes of a streamed response.

The adapters read the SDKs' raw streamed responses (`with_streaming_response`) instead of their
typed chunks: building a pydantic object per chunk was most of the CPU a Daphne process spent
relaying a reply. This decoder follows the event-stream rules of the HTML standard
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):
lines end in LF, CRLF or CR; a blank line ends an event; `data:` lines join with LF; a line
starting with a colon is a comment. Like the SDKs' own decoders, it ignores `id:` and `retry:`
and drops an event the body ends in the middle of.
"""

from __future__ import annotations


class SSEDecoder:
    """Feed it the body's chunks as they arrive; each call returns the events they completed."""

    __slots__ = ("_cr_ended", "_data", "_event", "_rest")

    def __init__(self) -> None:
        self._rest = b""  # the start of a line whose end has not arrived yet
        self._cr_ended = False  # the last chunk ended in a CR: an LF starting the next is its CRLF's
        self._event = b""
        self._data: bytes | None = None

    def feed(self, chunk: bytes) -> list[tuple[bytes, bytes]]:
        """(event name, data) of each event completed by `chunk`; the name is b"" when the event
        has no `event:` line (OpenAI's chunks)."""
        if not chunk:
            return []
        if self._cr_ended and chunk[:1] == b"\n":
            chunk = chunk[1:]
        buffer = self._rest + chunk if self._rest else chunk
        self._cr_ended = False
        if b"\r" in buffer:
            self._cr_ended = buffer.endswith(b"\r")
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buffer.split(b"\n")
        self._rest = lines.pop()
        events: list[tuple[bytes, bytes]] = []
        for line in lines:
            if not line:
                if self._data is not None or self._event:
                    events.append((self._event, self._data or b""))
                    self._event = b""
                    self._data = None
            elif line.startswith(b"data:"):
                value = line[6:] if line[5:6] == b" " else line[5:]
                self._data = value if self._data is None else self._data + b"\n" + value
            elif line.startswith(b"event:"):
                self._event = line[7:] if line[6:7] == b" " else line[6:]
            elif line == b"data":  # a field name alone is that field with an empty value
                self._data = b"" if self._data is None else self._data + b"\n"
            # Anything else: a comment (":..."), id, retry or an unknown field, all ignored.
        return events
