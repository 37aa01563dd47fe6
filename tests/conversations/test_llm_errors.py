"""Every HTTP status a provider answers maps to the ErrorKind the key failover relies on, for both
SDKs; Retry-After is read in all its forms."""

import time
import uuid
from email.utils import formatdate

import pytest

from billing.keys import KeyLease
from conversations.llm import get_adapter
from conversations.llm._common import parse_retry_after
from conversations.llm.base import ChatMessage, ChatRequest, ErrorKind, ProviderError
from tests.fakeprovider import Script


async def error_for(fake, provider: str, script: Script) -> ProviderError:
    secret = f"sk-{uuid.uuid4().hex}"
    fake.script(secret, script)
    base_url = fake.openai_base_url if provider == "openai" else fake.anthropic_base_url
    key = KeyLease(id=uuid.uuid4(), name="k", provider=provider, base_url=base_url, secret=secret)
    request = ChatRequest(model="some-model", messages=[ChatMessage(role="user", content="hi")], max_tokens=10)
    with pytest.raises(ProviderError) as caught:
        async for _ in get_adapter(provider).stream(request, key=key):
            pass
    return caught.value


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (402, ErrorKind.AUTH),  # the key's account cannot pay: no use retrying with it
        (404, ErrorKind.MODEL_NOT_FOUND),  # no such model here: another key may serve it
        (408, ErrorKind.TIMEOUT),
        (413, ErrorKind.CONTEXT_TOO_LONG),
        (422, ErrorKind.BAD_REQUEST),
        (500, ErrorKind.UNAVAILABLE),
        (502, ErrorKind.UNAVAILABLE),
        (529, ErrorKind.UNAVAILABLE),  # Anthropic's "overloaded"
    ],
)
async def test_status_maps_to_kind(fake_provider, provider, status, kind):
    error = await error_for(fake_provider, provider, Script(mode="error", status=status))

    assert error.kind == kind
    assert error.status == status


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize(
    "message",
    [
        "prompt is too long: 210000 tokens > 200000 maximum",
        "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens.",
        "input length and `max_tokens` exceed context limit: 190000 + 20000 > 200000",
        "the request exceeds the available context size, try increasing it",  # llama.cpp server
    ],
)
async def test_400_wordings_of_context_too_long_are_recognised(fake_provider, provider, message):
    error = await error_for(fake_provider, provider, Script(mode="error", status=400, message=message))

    assert error.kind == ErrorKind.CONTEXT_TOO_LONG
    assert message not in str(error) and "context size" not in str(error)  # our words, not theirs


def test_retry_after_in_seconds_milliseconds_and_http_date():
    assert parse_retry_after({"retry-after": "30"}) == 30.0
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "30"}) == 1.5
    in_a_minute = parse_retry_after({"retry-after": formatdate(time.time() + 60, usegmt=True)})
    assert 55 <= in_a_minute <= 61
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None
