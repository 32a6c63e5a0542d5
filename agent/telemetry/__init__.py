"""From results to telemetry: the recorder (metric tables, spans, state changes in the log) and
the OpenTelemetry providers and exporters chosen by the ``OTEL_*`` variables. What reaches into a
dependency's private parts is in one adapter module per dependency: ``_otel_sdk`` (the SDK) and
``_requests`` (the transport beneath the OTLP/HTTP exporters' ``requests`` session)."""
