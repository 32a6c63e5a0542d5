"""The OTLP/HTTP exporters' session: imported only when such an exporter is built, with
``requests`` and urllib3 (which nothing else the agent does before its first probe needs).

The SDK's exporters send through ``requests`` and read the whole answer into memory, with the
timeout applying to each socket read: a backend that answers 200 with a 1 GiB body, or trickles
its answer a byte at a time, holds the exporter's thread (and its memory) as long as it likes.
:class:`BoundedSession` is handed to the exporters through their public ``session=`` argument; the
transport beneath it, which gives each socket read only the time left, is an adapter to
``requests``, urllib3 and ``http.client`` (agent/telemetry/_requests.py). :func:`export_cause` is
the one place where the exceptions of ``requests``, urllib3, ``http.client``, ``ssl`` and
``socket`` become the causes ``/readyz`` and the log name.
"""

from __future__ import annotations

import errno
import http.client
import io
import socket
import ssl
import threading
import time
from collections.abc import Generator, Iterator
from typing import Any

import requests
import requests.exceptions
import urllib3.exceptions

from agent.telemetry._requests import DeadlineAdapter, request_deadline
from agent.telemetry.providers import ExportOutcome

__all__ = ["MAX_ANSWER", "BoundedSession", "ExportAbandoned", "OversizedAnswer", "export_cause"]

# An OTLP answer is an Export*ServiceResponse: empty, or a partial-success count and message.
MAX_ANSWER = 64 * 1024
_CHUNK = 16 * 1024


class OversizedAnswer(requests.exceptions.RequestException):
    """The backend's answer is larger than an OTLP reply can be; it was not read to the end."""


class ExportAbandoned(requests.exceptions.RequestException):
    """The agent is stopping and its shutdown budget leaves no time for this request. Not a
    connection error, so the SDK does not retry it (nor wait out a back-off first)."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and those it wraps: causes, contexts, and (as requests and urllib3 wrap them)
    the exceptions among its ``args`` and its ``reason``."""
    seen: set[int] = set()
    todo = [exc]
    while todo and len(seen) < 32:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        wrapped = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        todo.extend(e for e in wrapped if isinstance(e, BaseException))


_REFUSED = {errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH}


def export_cause(exc: BaseException, budget: float | None = None) -> ExportOutcome:
    """The cause of a failed request, as ``/readyz`` and the log name it: the one place where the
    exceptions of ``requests``, ``urllib3``, ``http.client``, ``ssl`` and ``socket`` become causes."""
    chain = list(_chain(exc))

    def having(*types: type[BaseException]) -> BaseException | None:
        return next((e for e in chain if isinstance(e, types)), None)

    if having(ExportAbandoned):
        return ExportOutcome("abandoned", "the agent stopped before the backend answered")
    if having(OversizedAnswer):
        return ExportOutcome("oversized", f"the answer was larger than {MAX_ANSWER} bytes")
    if having(ConnectionRefusedError) or any(isinstance(e, OSError) and e.errno in _REFUSED for e in chain):
        return ExportOutcome("refused", "the backend refused the connection or is unreachable")
    # urllib3's NewConnectionError derives from its ConnectTimeoutError; it is not a timeout.
    timeouts = (TimeoutError, requests.exceptions.Timeout, urllib3.exceptions.ReadTimeoutError)
    if having(*timeouts) or any(
        isinstance(e, urllib3.exceptions.ConnectTimeoutError)
        and not isinstance(e, urllib3.exceptions.NewConnectionError)
        for e in chain
    ):
        within = f" within {budget:.3g}s" if budget is not None else ""
        return ExportOutcome("timeout", f"no complete answer{within}")
    tls = having(
        ssl.SSLError, ssl.CertificateError, urllib3.exceptions.SSLError, requests.exceptions.SSLError
    )
    if tls is not None:
        verify = getattr(tls, "verify_message", None) or getattr(
            having(ssl.SSLCertVerificationError), "verify_message", None
        )
        return ExportOutcome("tls", f"TLS failed: {verify}" if verify else "the TLS handshake failed")
    if having(socket.gaierror, urllib3.exceptions.NameResolutionError):
        return ExportOutcome("dns", "the backend's name did not resolve")
    if having(http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
        return ExportOutcome("protocol", "the backend closed the connection without a complete answer")
    if having(
        http.client.BadStatusLine,
        http.client.LineTooLong,
        urllib3.exceptions.HeaderParsingError,
        requests.exceptions.InvalidHeader,
        requests.exceptions.ContentDecodingError,
    ):
        return ExportOutcome("garbage", "the answer is not HTTP")
    if having(
        http.client.HTTPException, urllib3.exceptions.ProtocolError, requests.exceptions.ConnectionError
    ):
        return ExportOutcome("protocol", "the answer broke off")
    return ExportOutcome("error", type(exc).__name__)


def _budget(timeout: Any) -> float | None:
    if isinstance(timeout, int | float):
        return float(timeout)
    if isinstance(timeout, tuple) and all(isinstance(t, int | float) for t in timeout):
        return float(sum(timeout))
    return None


class BoundedSession(requests.Session):
    """A ``requests`` session for the OTLP/HTTP exporters that no answer can hurt.

    * Each request ends by the ``timeout`` it is given (the SDK passes what is left of the export's
      budget): every socket read and write waits only for the time left, so an answer trickled a
      byte at a time fails as ``timeout`` at the deadline instead of holding the exporter's thread.
    * The answer's body is read up to ``max_answer`` bytes; beyond that the connection is closed
      and the request fails as ``oversized`` (an :class:`OversizedAnswer`, which the SDK does not
      retry).
    * The outcomes of each thread's requests, with the cause of each failure, are kept for the
      exporter's wrapper (:meth:`take_outcome`): the SDK's exporters only say SUCCESS or FAILURE.
    """

    def __init__(self, max_answer: int = MAX_ANSWER) -> None:
        super().__init__()
        self.max_answer = max_answer
        adapter = DeadlineAdapter()
        self.mount("http://", adapter)
        self.mount("https://", adapter)
        self._outcomes = threading.local()
        self.cutoff: float | None = None
        """Monotonic time past which no request runs: the end of the agent's shutdown budget."""

    def stop_by(self, cutoff: float) -> None:
        """From now on, end every request by ``cutoff`` (monotonic) and refuse new ones after it,
        as :class:`ExportAbandoned`: the SDK's retries and back-offs stop with it."""
        self.cutoff = cutoff

    def take_outcome(self) -> ExportOutcome | None:
        """What became of this thread's requests since the last call (None if it made none): the
        outcome of the last one, unless it timed out after an earlier one had a telling answer.

        The SDK retries within the export's budget and may send its last attempt with almost none
        of it left; that attempt's ``timeout`` says less than the ``http 503`` before it.
        """
        outcomes: list[ExportOutcome] = getattr(self._outcomes, "seen", [])
        self._outcomes.seen = []
        if not outcomes:
            return None
        last = outcomes[-1]
        if last.cause == "timeout":
            telling = (o for o in reversed(outcomes) if o.cause not in ("", "timeout"))
            return next(telling, last)
        return last

    def _note(self, outcome: ExportOutcome) -> None:
        seen: list[ExportOutcome] = getattr(self._outcomes, "seen", [])
        self._outcomes.seen = [*seen[-7:], outcome]  # bounded, should nobody take them

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        budget = _budget(kwargs.get("timeout"))
        if self.cutoff is not None:
            left = self.cutoff - time.monotonic()
            if left <= 0:
                abandoned = ExportAbandoned("the shutdown budget is spent", request=request)
                self._note(export_cause(abandoned, budget))
                raise abandoned
            budget = left if budget is None else min(budget, left)
            kwargs["timeout"] = budget
        if budget is not None and budget <= 0:
            # The SDK's last retry may come with nothing left (urllib3 would raise ValueError).
            spent = requests.exceptions.ConnectTimeout("nothing left of the export's budget", request=request)
            self._note(export_cause(spent, budget))
            raise spent
        kwargs["stream"] = True
        try:
            with request_deadline(None if budget is None else time.monotonic() + budget, self):
                response = super().send(request, **kwargs)
                self._read_body(response)
        except Exception as exc:
            cut = self.cutoff is not None and time.monotonic() >= self.cutoff
            self._note(
                ExportOutcome("abandoned", "the agent stopped first") if cut else export_cause(exc, budget)
            )
            if self.cutoff is not None:
                # The agent is stopping: one try at what is buffered, no retry after a back-off.
                raise ExportAbandoned("no retry while the agent stops", request=request) from exc
            raise
        status = response.status_code
        self._note(
            ExportOutcome()
            if 200 <= status < 400
            else ExportOutcome(f"http {status}", f"HTTP {status} {response.reason or ''}".strip())
        )
        return response

    def resolve_redirects(self, *args: Any, **kwargs: Any) -> Generator[requests.Response, None, None]:
        """No redirects: the exporters follow none, and ``requests`` would read a redirect's whole
        body, uncapped, to release its connection (even to only note where it points)."""
        yield from ()

    def _read_body(self, response: requests.Response) -> None:
        """Read the body up to the cap (within the deadline, as the socket reads are bounded) and
        keep it as the response's content."""
        raw = response.raw
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.max_answer:
            response.close()
            raise OversizedAnswer(f"Content-Length {length} is above {self.max_answer} bytes")
        body = bytearray()
        try:
            for chunk in raw.stream(_CHUNK, decode_content=True):
                body += chunk
                if len(body) > self.max_answer:
                    raise OversizedAnswer(f"the answer is larger than {self.max_answer} bytes")
        except OversizedAnswer:
            response.close()
            raise
        except urllib3.exceptions.ReadTimeoutError as exc:
            response.close()
            raise requests.exceptions.ReadTimeout(exc, request=response.request) from exc
        except urllib3.exceptions.SSLError as exc:
            response.close()
            raise requests.exceptions.SSLError(exc, request=response.request) from exc
        except urllib3.exceptions.DecodeError as exc:
            response.close()
            raise requests.exceptions.ContentDecodingError(exc, request=response.request) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            response.close()
            raise requests.exceptions.ChunkedEncodingError(exc, request=response.request) from exc
        raw.release_conn()
        # What the SDK may read (``content``, ``text``) comes from the capped copy.
        response.raw = io.BytesIO(bytes(body))
