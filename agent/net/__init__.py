"""The network boundary of probes: the HTTP client they are handed (fresh connections, timed
phases, capped bodies) and the translation of library exceptions into reasons. What reaches into
a dependency's private parts is in one adapter module per dependency: ``_aiohttp`` and ``_ssl``."""
