"""The adapter to aiohttp's private parts: the one module of the HTTP client that reaches into them.

aiohttp has no trace signal between "TCP is up" and "TLS is done", so the client could not tell the
``connect`` phase from the ``tls`` phase. :class:`TimedConnector` overrides the private
``TCPConnector._wrap_create_connection`` (aiohttp 3.14: keyword arguments ``addr_infos``, ``req``,
``timeout``, ``client_error``), repeating its few lines with a call to ``on_tcp_up`` between the
socket's connect and the TLS handshake, and reads the private attributes those lines read
(``_local_addr_infos``, ``_happy_eyeballs_delay``, ``_interleave``, ``_loop``).

``tests/test_adapters.py`` fails, naming the method or attribute, on an aiohttp that changes them.
The whole module goes when the client moves off aiohttp.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any

import aiohappyeyeballs
import aiohttp

__all__ = ["TimedConnector"]


class TimedConnector(aiohttp.TCPConnector):
    """A connector that says when TCP is up, so that TCP connect and TLS handshake are told apart.

    Both hooks run in the task of the request the connection is made for: ``on_tcp_up()`` when
    the socket has connected, ``on_connected(transport)`` when the connection (with its TLS
    handshake, for https) is made.
    """

    def __init__(
        self,
        *,
        on_tcp_up: Callable[[], None],
        on_connected: Callable[[asyncio.Transport], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._on_tcp_up, self._on_connected = on_tcp_up, on_connected

    async def _wrap_create_connection(
        self,
        *args: Any,
        addr_infos: list[Any],
        req: aiohttp.ClientRequest,
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature
        client_error: type[Exception] = aiohttp.ClientConnectorError,
        **kwargs: Any,
    ) -> tuple[asyncio.Transport, aiohttp.client_proto.ResponseHandler]:
        try:
            sock = await aiohappyeyeballs.start_connection(
                addr_infos=addr_infos,
                local_addr_infos=self._local_addr_infos,
                happy_eyeballs_delay=self._happy_eyeballs_delay,
                interleave=self._interleave,
                loop=self._loop,
            )
            self._on_tcp_up()
            transport, protocol = await self._loop.create_connection(*args, **kwargs, sock=sock)
            self._on_connected(transport)
            return transport, protocol
        except ssl.CertificateError as exc:
            raise aiohttp.ClientConnectorCertificateError(req.connection_key, exc) from exc
        except ssl.SSLError as exc:
            raise aiohttp.ClientConnectorSSLError(req.connection_key, exc) from exc
        except OSError as exc:
            if exc.errno is None and isinstance(exc, asyncio.TimeoutError):
                raise
            raise client_error(req.connection_key, exc) from exc
