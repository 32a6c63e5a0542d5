#!/usr/bin/env bash
# Installs what the benchmark runs beside the agent: Debian's nginx and blackbox_exporter.
set -euo pipefail
if command -v nginx >/dev/null && command -v prometheus-blackbox-exporter >/dev/null; then exit 0; fi
SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nginx-light prometheus-blackbox-exporter
# The packages start system services; the benchmark runs its own instances on free ports.
$SUDO service nginx stop >/dev/null 2>&1 || true
$SUDO service prometheus-blackbox-exporter stop >/dev/null 2>&1 || true
