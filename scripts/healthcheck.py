"""Container health probe: GET /readyz on the local Daphne, exit 0 when it answers 200.

Uses only the standard library (no curl in the slim image). Sends the first allowed host as Host
and X-Forwarded-Proto: https, as the proxy in front would, so ALLOWED_HOSTS and the HTTPS
redirect stay as strict as in production."""

import os
import sys
import urllib.error
import urllib.request

path = sys.argv[1] if len(sys.argv) > 1 else "/readyz"
host = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost").split(",")[0].strip().lstrip(".") or "localhost"
if host == "*":
    host = "localhost"
port = os.environ.get("PORT", "8000")
request = urllib.request.Request(
    f"http://127.0.0.1:{port}{path}", headers={"Host": host, "X-Forwarded-Proto": "https"}
)
try:
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - a fixed local URL
        sys.exit(0 if response.status == 200 else 1)
except (urllib.error.URLError, OSError) as error:
    sys.stderr.write(f"healthcheck {path}: {error}\n")
    sys.exit(1)
