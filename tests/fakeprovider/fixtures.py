"""pytest fixture `fake_provider`: a FakeProvider listening on a free 127.0.0.1 port for one test."""

import pytest

from .server import FakeProvider


@pytest.fixture
def fake_provider():
    fake = FakeProvider().start()
    try:
        yield fake
    finally:
        fake.stop()
