"""The adapter to aiohttp's import: the one module that changes how aiohttp starts.

aiohttp (3.14) builds the default SSL contexts of its client when the package is imported
(``aiohttp/connector.py``: ``_SSL_CONTEXT_VERIFIED`` and ``_SSL_CONTEXT_UNVERIFIED``), and each of
them loads the system's CA certificates (``set_default_verify_paths``): 40-90 ms each on the
project's machine, a tenth of the agent's start-up, for a client the agent uses only to pass an
inbound request on to a peer or a worker. Importing ``aiohttp.web`` alone does not avoid it:
``aiohttp/__init__.py`` imports the client whatever part of the package is asked for.

:func:`import_aiohttp`, which ``vantage run`` calls before anything imports aiohttp, imports it
with ``ssl.SSLContext.set_default_verify_paths`` replaced, for the duration of the import, by a
function that notes the context instead of loading its certificates: the contexts are built as
aiohttp builds them, and are left without certificates. :func:`wait_for_certificates` loads them
(once, in a thread), and each aiohttp client of the agent awaits it before its first request; a
client that did not would fail its TLS verification (it would trust nothing), never pass it.

In a process that imported aiohttp before (the tests), nothing is changed. The test
``test_aiohttp_is_imported_without_loading_certificates`` (tests/test_startup.py) fails when an
aiohttp stops building its contexts at import: this module can go then.
"""

from __future__ import annotations

import ssl
import sys
import threading

import anyio

__all__ = ["deferred", "import_aiohttp", "load_certificates", "wait_for_certificates"]

_deferred: list[ssl.SSLContext] = []
_lock = threading.Lock()


def import_aiohttp() -> None:
    """Import aiohttp, deferring the certificates of the contexts it builds at import; a no-op
    when it was imported already. Call it while no other thread builds SSL contexts."""
    if "aiohttp" in sys.modules:
        return
    own = vars(ssl.SSLContext).get("set_default_verify_paths")

    def note(context: ssl.SSLContext) -> None:
        _deferred.append(context)

    ssl.SSLContext.set_default_verify_paths = note  # type: ignore[method-assign,assignment]
    try:
        import aiohttp  # noqa: F401
    finally:
        if own is None:
            del ssl.SSLContext.set_default_verify_paths
        else:  # pragma: no cover - no Python defines it on ssl.SSLContext itself today
            ssl.SSLContext.set_default_verify_paths = own  # type: ignore[method-assign]


def deferred() -> int:
    """How many contexts still wait for their certificates."""
    return len(_deferred)


def load_certificates() -> None:
    """Load the certificates of the contexts :func:`import_aiohttp` deferred; blocking (tens of
    milliseconds per context, mostly without the interpreter lock)."""
    with _lock:
        while _deferred:
            _deferred[-1].set_default_verify_paths()
            _deferred.pop()


async def wait_for_certificates() -> None:
    """Load the deferred certificates in a thread, if any are left: before an aiohttp client's
    first request."""
    if _deferred:
        await anyio.to_thread.run_sync(load_certificates)
