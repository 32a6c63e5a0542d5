#!/usr/bin/env bash
# `make run`: start the sandbox vendor on loopback, then the agent on examples/checks.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export SANDBOX_API_KEY=sk_test_sandbox SANDBOX_CLIENT_SECRET=sandbox-client-secret SANDBOX_PORT=8099
export SANDBOX_WEBHOOK_SECRET=whsec_sandbox_0123456789 SANDBOX_JOB_TOKEN=sandbox-job-token-0123
export VANTAGE_PORT="${VANTAGE_PORT:-8080}"
export AGENT_URL="http://127.0.0.1:$VANTAGE_PORT" VANTAGE_PUBLIC_URL="http://127.0.0.1:$VANTAGE_PORT"
in_use() { "$PY" -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2)' "$1" 2>/dev/null; }
if in_use "$SANDBOX_PORT"; then
  echo "make run: port $SANDBOX_PORT on 127.0.0.1 is taken by another program; the sandbox vendor needs it." >&2
  echo "make run: stop that program and try again (the example checks would probe it instead)." >&2
  exit 1
fi
# The sandbox's own log (aiohttp prints cancelled handlers when it is stopped) stays out of the way.
sandbox_log="${TMPDIR:-/tmp}/vantage-sandbox.log"
"$PY" examples/sandbox.py 2>>"$sandbox_log" &
sandbox=$!
trap 'kill "$sandbox" 2>/dev/null; wait "$sandbox" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  kill -0 "$sandbox" 2>/dev/null || break
  in_use "$SANDBOX_PORT" && break
  sleep 0.1
done
if ! kill -0 "$sandbox" 2>/dev/null || ! in_use "$SANDBOX_PORT"; then
  echo "make run: the sandbox vendor did not start on port $SANDBOX_PORT; its log ($sandbox_log) ends:" >&2
  tail -n 5 "$sandbox_log" >&2
  exit 1
fi
export VANTAGE_CHECKS_FILE=examples/checks.yaml VANTAGE_LOG_RUNS=true VANTAGE_LOG_FORMAT=text
echo "agent on http://127.0.0.1:$VANTAGE_PORT  (/metrics, /api/checks, /readyz); Ctrl-C stops both"
.venv/bin/vantage run || status=$?
exit "${status:-0}"
