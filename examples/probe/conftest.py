"""pytest's view of the example: this folder on the path (the package is importable without an
install) and the event loop anyio's tests run on."""

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
