"""Configuration: the agent's settings from ``VANTAGE_*`` variables, the check set and each check's
settings, secret references and their redaction, durations, and the registry of probe types.

It reads the environment and files and runs nothing."""
