#!/usr/bin/env bash
# Installs the Debian packages the tests use beside Python: Prometheus (the server, for the
# end-to-end test, and promtool, for the alert rules), Alertmanager (amtool and the server, for the
# example configuration in examples/alerting/) and blackbox_exporter (the conformance suite,
# tests/conformance/, runs every case in it and in the agent). Called by `make test`; a no-op once
# they are there. Without root or sudo it says so and the tests that need them are skipped (outside
# CI; with CI set they fail).
set -euo pipefail
# Chromium (Debian's), for tests/test_status_page.py, which drives the status page in it headless.
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo -n"; else SUDO=none; fi
  if [ "$SUDO" = none ]; then echo "tests/setup.sh: cannot install Debian's chromium package (not root, no sudo)" >&2
  else
    install_chromium() { DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
    install_chromium || { $SUDO apt-get update -qq && install_chromium; }
  fi
fi
PACKAGES=(prometheus prometheus-alertmanager prometheus-blackbox-exporter)
if command -v prometheus >/dev/null && command -v promtool >/dev/null \
  && command -v prometheus-alertmanager >/dev/null && command -v amtool >/dev/null \
  && command -v prometheus-blackbox-exporter >/dev/null; then exit 0; fi
if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo -n"; else
  echo "tests/setup.sh: cannot install Debian's ${PACKAGES[*]} packages (not root, no sudo)" >&2; exit 0
fi
install() {
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
}
install || { $SUDO apt-get update -qq && install; }
# The packages start system services where they can; the tests run their own instances.
$SUDO service prometheus stop >/dev/null 2>&1 || true
$SUDO service prometheus-alertmanager stop >/dev/null 2>&1 || true
$SUDO service prometheus-blackbox-exporter stop >/dev/null 2>&1 || true
