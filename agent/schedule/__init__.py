"""When and where checks run: the scheduler (one timer heap, the concurrency bound, each run's
timeout) and sharding (which replica and worker runs a check, at which phase of its interval)."""
