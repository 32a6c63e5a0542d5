"""Response bodies decoded from their ``Content-Encoding`` as they arrive, up to the body cap.

libcurl decodes only what it was built with (gzip, deflate and br in the wheel; not zstd, whose
responses it refuses outright), so the agent decodes every encoding itself: gzip and deflate
with :mod:`zlib`, br with ``brotli``, zstd with ``zstandard`` (both declared dependencies, loaded
on the first response that needs them). Every stage stops once it has produced one byte more
than the cap, so that a small compressed body cannot make the agent hold a large decoded one.

An encoding this module does not know (``compress``, a vendor's own) leaves the body as it came,
as blackbox_exporter does; ``identity`` is no encoding.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["ENCODINGS", "BodyDecoder", "DecodeError", "content_encodings"]

ENCODINGS = ("gzip", "deflate", "br", "zstd")
"""The encodings the agent decodes."""

_ALIASES = {"x-gzip": "gzip"}
_MAX_LAYERS = 4  # "gzip, gzip, gzip, ...": a body is not encoded more than a few times for real


class DecodeError(Exception):
    """The body is not what its ``Content-Encoding`` says."""


def content_encodings(values: Sequence[str]) -> list[str]:
    """The codings of ``Content-Encoding`` header values in the order they were applied."""
    codings = [
        _ALIASES.get(token, token)
        for value in values
        for token in (part.strip().lower() for part in value.split(","))
        if token and token != "identity"
    ]
    return codings


class BodyDecoder:
    """Decodes a body encoded with ``codings`` (in the order applied), chunk by chunk.

    ``feed`` returns what a chunk decodes to, never more than ``limit`` bytes in all (the caller
    passes its cap plus one, to learn that the body goes on); ``full`` says the limit was reached.
    """

    def __init__(self, codings: Sequence[str], limit: int) -> None:
        if len(codings) > _MAX_LAYERS:
            raise DecodeError(f"the body is encoded {len(codings)} times")
        self.limit = limit
        self.produced = 0
        self.full = False
        # Decoded in the reverse order of application: the last coding applied comes off first.
        self._stages = [_stage(coding) for coding in reversed(codings) if coding in ENCODINGS]

    @property
    def active(self) -> bool:
        """Whether any coding is decoded here (an unknown one passes through)."""
        return bool(self._stages)

    def feed(self, chunk: bytes) -> bytes:
        data = chunk
        room = self.limit - self.produced
        if room <= 0:  # zlib reads a max_length of 0 as no limit at all
            self.full = True
            return b""
        for stage in self._stages:
            if not data:
                break
            data = stage(data, room)
            if len(data) >= room:
                data = data[:room]
                self.full = True
        self.produced += len(data)
        return data


_Stage = Callable[[bytes, int], bytes]


def _stage(coding: str) -> _Stage:
    if coding == "gzip":
        return _Zlib(gzip=True).decode
    if coding == "deflate":
        return _Zlib(gzip=False).decode
    if coding == "br":
        return _brotli()
    return _zstd()


class _Zlib:
    """gzip (several members in a row, as Go reads them) or deflate (zlib-wrapped, as RFC 9110
    says, or raw, as some servers send it)."""

    def __init__(self, *, gzip: bool) -> None:
        self._gzip = gzip
        self._raw_tried = False
        self._decoder = self._new()
        self._started = False

    def _new(self, raw: bool = False) -> Any:
        if raw:
            return zlib.decompressobj(-zlib.MAX_WBITS)
        return zlib.decompressobj(16 + zlib.MAX_WBITS if self._gzip else zlib.MAX_WBITS)

    def decode(self, data: bytes, limit: int) -> bytes:
        out = bytearray()
        while data and len(out) < limit:
            try:
                out += self._decoder.decompress(data, limit - len(out))
            except zlib.error as exc:
                if not self._gzip and not self._started and not self._raw_tried:
                    self._raw_tried = True
                    self._decoder = self._new(raw=True)
                    continue
                name = "gzip" if self._gzip else "deflate"
                raise DecodeError(f"the body is not valid {name} ({exc})") from None
            self._started = True
            if self._decoder.eof and self._gzip and self._decoder.unused_data:
                data = self._decoder.unused_data  # another gzip member
                self._decoder = self._new()
            else:
                data = self._decoder.unconsumed_tail
        return bytes(out)


def _brotli() -> _Stage:
    import brotli  # only a check that meets a br response pays for loading it

    decoder = brotli.Decompressor()

    def decode(data: bytes, limit: int) -> bytes:
        try:
            return bytes(decoder.process(data, output_buffer_limit=limit))
        except brotli.error as exc:
            raise DecodeError(f"the body is not valid br ({exc})") from None

    return decode


class _Full(Exception):
    """The zstd sink has what it may hold."""


def _zstd() -> _Stage:
    import zstandard  # only a check that meets a zstd response pays for loading it

    sink = bytearray()
    state = {"limit": 0}

    class _Sink:
        def write(self, data: bytes) -> int:
            sink.extend(data)
            if len(sink) >= state["limit"]:
                raise _Full
            return len(data)

    writer = zstandard.ZstdDecompressor().stream_writer(
        _Sink(),  # type: ignore[arg-type]  # write() is all it calls
        write_size=16384,
        write_return_read=True,
    )

    def decode(data: bytes, limit: int) -> bytes:
        sink.clear()
        state["limit"] = limit
        try:
            writer.write(data)
        except _Full:
            pass
        except zstandard.ZstdError as exc:
            raise DecodeError(f"the body is not valid zstd ({exc})") from None
        return bytes(sink)

    return decode
