#!/usr/bin/env bash
# `make run`: start the sandbox vendor on loopback, then the agent on examples/checks.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export SANDBOX_API_KEY=sk_test_sandbox SANDBOX_CLIENT_SECRET=sandbox-client-secret SANDBOX_PORT=8099
export SANDBOX_WEBHOOK_SECRET=whsec_sandbox_0123456789 SANDBOX_JOB_TOKEN=sandbox-job-token-0123
export VANTAGE_PORT="${VANTAGE_PORT:-8080}"
export AGENT_URL="http://127.0.0.1:$VANTAGE_PORT" VANTAGE_PUBLIC_URL="http://127.0.0.1:$VANTAGE_PORT"
# The sandbox's own log (aiohttp prints cancelled handlers when it is stopped) stays out of the way.
"$PY" examples/sandbox.py 2>>"${TMPDIR:-/tmp}/vantage-sandbox.log" &
sandbox=$!
trap 'kill "$sandbox" 2>/dev/null; wait "$sandbox" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  "$PY" -c 'import socket,sys; socket.create_connection(("127.0.0.1", 8099), 0.2)' 2>/dev/null && break
  sleep 0.1
done
export VANTAGE_CHECKS_FILE=examples/checks.yaml VANTAGE_LOG_RUNS=true VANTAGE_LOG_FORMAT=text
echo "agent on http://127.0.0.1:$VANTAGE_PORT  (/metrics, /api/checks, /readyz); Ctrl-C stops both"
.venv/bin/vantage run || status=$?
exit "${status:-0}"
