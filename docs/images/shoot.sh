#!/usr/bin/env bash
# Screenshots of the status page and of one check's debug view, for the README: the built-in
# example (examples/run.sh, the sandbox vendor and examples/checks.yaml) on a spare port, grouped
# by team, then headless Chromium (Debian's `chromium`) against it. Redo with:
#   docs/images/shoot.sh            (PY=path/to/python to use another environment)
set -euo pipefail
cd "$(dirname "$0")/../.."
CHROMIUM="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}"
[ -n "$CHROMIUM" ] || { echo "shoot.sh: needs chromium (apt-get install chromium)" >&2; exit 1; }
export VANTAGE_PORT="${VANTAGE_PORT:-18080}" VANTAGE_STATUS_GROUP_BY=team
export VANTAGE_TRACE_URL_TEMPLATE='https://grafana.example/explore?traceId={trace_id}'
if curl -fsS "http://127.0.0.1:$VANTAGE_PORT/healthz" >/dev/null 2>&1; then
  echo "shoot.sh: port $VANTAGE_PORT is taken (another agent?); set VANTAGE_PORT to a free one" >&2; exit 1
fi
log="${TMPDIR:-/tmp}/vantage-shoot.log"
# A session of its own, so that stopping it stops the sandbox and the agent with it.
setsid examples/run.sh >"$log" 2>&1 &
agent=$!
trap 'kill -- -"$agent" 2>/dev/null; wait "$agent" 2>/dev/null || true' EXIT
url="http://127.0.0.1:$VANTAGE_PORT"
for _ in $(seq 100); do
  curl -fsS "$url/healthz" >/dev/null 2>&1 && break
  sleep 0.2
done
# Long enough for every example check to have run a few times (the slowest ticks every 30 s).
sleep "${SHOOT_WAIT:-65}"
profile=$(mktemp -d)
trap 'kill -- -"$agent" 2>/dev/null; wait "$agent" 2>/dev/null || true; rm -rf "$profile"' EXIT
shoot() {  # shoot URL FILE HEIGHT
  rm -f "$2"
  "$CHROMIUM" --headless --no-sandbox --disable-gpu --hide-scrollbars --force-device-scale-factor=1 \
    --user-data-dir="$profile" --window-size=1280,"$3" --screenshot="$PWD/$2" "$1" >/dev/null 2>&1 || true
  [ -s "$2" ] || { echo "shoot.sh: chromium wrote no $2" >&2; exit 1; }
  echo "wrote $2"
}
shoot "$url/" docs/images/status-page.png 1300
shoot "$url/checks/sandbox-charges" docs/images/check-page.png 1450
shoot "$url/checks/sandbox-token-then-shipments" docs/images/flow-page.png 1250
