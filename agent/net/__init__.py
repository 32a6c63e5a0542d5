"""The network boundary of probes: the HTTP client they are handed (libcurl underneath, timed
phases, capped bodies, a span per hop). What reaches into a dependency's private parts is in one
adapter module per dependency: ``_ssl``."""
