"""Vantage's built-in probe types, one module per type; each is also an entry point in ``vantage.probes``."""
