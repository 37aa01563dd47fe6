"""The fake provider in a process of its own (`python -m tests.fakeprovider`), on a free port."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class NotStarted(RuntimeError):
    """The process exited, or listened on nothing, within the time allowed; its output says why."""


@contextlib.contextmanager
def standalone(*, text: str, pace_ms: float, timeout: float = 20) -> Iterator[int]:
    """Start it, wait until it listens, yield its port; stop it afterwards."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "tests.fakeprovider", "--port", str(port), "--pace-ms", str(pace_ms), "--text", text]
    # Its output goes to a file, not a pipe nobody reads while it runs (a full pipe would stall it).
    output = tempfile.TemporaryFile()
    server = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    server.kill()
                    server.wait(10)
                    output.seek(0)
                    raise NotStarted(f"the standalone fake provider did not start: {output.read()!r}") from None
                time.sleep(0.05)
        yield port
    finally:
        server.terminate()
        server.wait(10)
        output.close()
