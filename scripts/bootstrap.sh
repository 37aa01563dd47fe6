# Sourced by scripts/start and scripts/test: makes .venv and installs the pinned requirements
# whenever the requirement files change (a stamp holds their hash), so a fresh clone needs only
# python3.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
VENV="${VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "parley: creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
want="$(cat requirements.txt requirements-dev.txt | sha256sum | cut -c1-16)"
stamp="$VENV/.parley-requirements"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "parley: installing requirements into $VENV" >&2
  "$VENV/bin/pip" install --disable-pip-version-check -q -r requirements-dev.txt
  echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
