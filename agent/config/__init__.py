"""Configuration: the agent's settings from ``VANTAGE_*`` variables, the check set and each check's
settings, secret references and their redaction, and the registry of probe types (durations are
the SDK's, ``agent/sdk/durations.py``).

It reads the environment and files and runs nothing."""
