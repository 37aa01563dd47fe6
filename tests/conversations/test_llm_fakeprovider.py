"""The fake provider itself: non-streaming answers and the models list through the real SDKs
(what title/summary generation and a "test key" action use), and the standalone server."""


import anthropic
import openai
import pytest

from tests.fakeprovider import Script
from tests.fakeprovider.standalone import standalone


async def test_openai_non_streaming_answer_and_usage(fake_provider):
    fake_provider.script("sk-plain", Script(text="A short title", input_tokens=12))
    client = openai.AsyncOpenAI(api_key="sk-plain", base_url=fake_provider.openai_base_url, max_retries=0)

    completion = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "name this"}], max_tokens=20
    )
    await client.close()

    assert completion.choices[0].message.content == "A short title"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == 12 and completion.usage.completion_tokens == 3
    [sent] = fake_provider.requests_for("sk-plain")
    assert sent.stream is False and sent.max_tokens == 20


async def test_anthropic_non_streaming_answer_and_usage(fake_provider):
    fake_provider.script("sk-ant-plain", Script(text="A short title", input_tokens=12))
    client = anthropic.AsyncAnthropic(api_key="sk-ant-plain", base_url=fake_provider.anthropic_base_url, max_retries=0)

    message = await client.messages.create(
        model="claude-haiku-4-5", max_tokens=20, system="titles", messages=[{"role": "user", "content": "name this"}]
    )
    await client.close()

    assert message.content[0].text == "A short title"
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 12 and message.usage.output_tokens == 3
    [sent] = fake_provider.requests_for("sk-ant-plain")
    assert sent.system == "titles" and sent.stream is False


async def test_models_list_answers_a_good_key_and_refuses_a_bad_one(fake_provider):
    fake_provider.script("sk-bad", Script(mode="error", status=401))
    good = openai.AsyncOpenAI(api_key="sk-good", base_url=fake_provider.openai_base_url, max_retries=0)
    bad = openai.AsyncOpenAI(api_key="sk-bad", base_url=fake_provider.openai_base_url, max_retries=0)
    ant = anthropic.AsyncAnthropic(api_key="sk-ant", base_url=fake_provider.anthropic_base_url, max_retries=0)

    models = await good.models.list()
    with pytest.raises(openai.AuthenticationError):
        await bad.models.list()
    ant_models = await ant.models.list()
    for client in (good, bad, ant):
        await client.close()

    assert [m.id for m in models.data] == ["gpt-4o-mini", "gpt-4o"]
    assert "claude-haiku-4-5" in [m.id for m in ant_models.data]


def test_standalone_server_answers_the_sdk():
    with standalone(text="bench reply", pace_ms=1) as port:
        client = openai.OpenAI(api_key="any", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)
        chunks = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=50
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        client.close()

    assert text == "bench reply"
