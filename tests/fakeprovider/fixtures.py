"""pytest fixture `fake_provider`: a FakeProvider listening on a free 127.0.0.1 port for one test."""

import pytest

from .server import FakeProvider


@pytest.fixture
def fake_provider():
    # The SDKs imported and the token encoding loaded first, as a serving process does at start
    # (conversations.llm.warm_up, from asgi.py): a test that tightens the first-token allowance
    # must not see the first import (seconds of it) as a provider too slow to answer, and fail
    # over, when it happens to run first.
    from conversations import llm

    llm.warm_up()
    fake = FakeProvider().start()
    try:
        yield fake
    finally:
        fake.stop()
