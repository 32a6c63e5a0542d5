"""Vantage: synthetic monitoring for the third-party integrations a web platform depends on."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vantage")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
