"""The fake provider in a process of its own (`python -m tests.fakeprovider`), on a free port;
and the two helpers that takes, which the benches use for their own processes too."""

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


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_port(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    """Until something listens on `port`; NotStarted when `process` exits or `timeout` passes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise NotStarted(f"process {process.args[:3]} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise NotStarted(f"nothing listens on port {port}")


@contextlib.contextmanager
def standalone(*, text: str, pace_ms: float, timeout: float = 20) -> Iterator[int]:
    """Start it, wait until it listens, yield its port; stop it afterwards."""
    port = free_port()
    command = [sys.executable, "-m", "tests.fakeprovider", "--port", str(port), "--pace-ms", str(pace_ms), "--text", text]
    # Its output goes to a file, not a pipe nobody reads while it runs (a full pipe would stall it).
    output = tempfile.TemporaryFile()
    server = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
    try:
        try:
            wait_port(port, server, timeout)
        except NotStarted:
            server.kill()
            server.wait(10)
            output.seek(0)
            raise NotStarted(f"the standalone fake provider did not start: {output.read()!r}") from None
        yield port
    finally:
        server.terminate()
        server.wait(10)
        output.close()
