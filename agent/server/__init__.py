"""The agent's HTTP server: health, readiness, ``/metrics``, the status API, and the inbound
endpoints (``/hooks``, ``/heartbeat``) with the inbox that round-trip probes wait on."""
