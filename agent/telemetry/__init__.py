"""From results to telemetry: the recorder (metric tables, spans, state changes in the log) and
the OpenTelemetry providers and exporters chosen by the ``OTEL_*`` variables."""
