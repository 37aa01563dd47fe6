"""The server-sent events decoder the adapters read streamed replies with (conversations.llm._sse)."""

import pytest

from conversations.llm._sse import SSEDecoder


def decode(*chunks: bytes) -> list[tuple[bytes, bytes]]:
    decoder = SSEDecoder()
    return [event for chunk in chunks for event in decoder.feed(chunk)]


def test_events_with_and_without_a_name():
    assert decode(b'data: {"a": 1}\n\nevent: ping\ndata: {}\n\n') == [(b"", b'{"a": 1}'), (b"ping", b"{}")]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_every_line_end_the_standard_allows(newline):
    body = b"event: x\ndata: one\n\ndata: two\n\n".replace(b"\n", newline)

    assert decode(body) == [(b"x", b"one"), (b"", b"two")]


def test_an_event_split_anywhere_across_chunks_comes_out_once_whole():
    body = b"event: content_block_delta\r\ndata: {\"text\": \"h\xc3\xa9\"}\r\n\r\n"
    for cut in range(1, len(body)):
        assert decode(body[:cut], body[cut:]) == [(b"content_block_delta", b'{"text": "h\xc3\xa9"}')], cut


def test_a_crlf_split_between_chunks_is_one_line_end():
    # Read as two line ends, the CR and the LF would end the event after its name, before its data.
    assert decode(b"event: message_stop\r", b"\ndata: {}\r\n\r\n") == [(b"message_stop", b"{}")]


def test_data_lines_join_with_newlines_and_the_space_after_the_colon_is_optional():
    assert decode(b"data:first\ndata: second\ndata\n\n") == [(b"", b"first\nsecond\n")]


def test_comments_ids_retries_and_unknown_fields_are_ignored():
    assert decode(b": keep-alive\n\nid: 7\nretry: 100\nfoo: bar\ndata: x\n\n") == [(b"", b"x")]


def test_an_event_the_body_ends_in_the_middle_of_is_dropped():
    decoder = SSEDecoder()

    assert decoder.feed(b"data: [DONE]\n\ndata: {\"partial\"") == [(b"", b"[DONE]")]
    assert decoder.feed(b"") == []


def test_blank_lines_alone_make_no_events():
    assert decode(b"\n\n\r\n\n") == []


def test_a_chunk_json_parses_as_json_loads_would_even_where_jiter_is_stricter():
    from conversations.llm._common import json_object
    from conversations.llm.base import ProviderError

    assert json_object(b'{"t": "\\u00e9 ok", "n": [1, 2.5]}', provider="X", after_output=False) == {"t": "é ok", "n": [1, 2.5]}
    # A lone surrogate escape (an emoji split at a token boundary): jiter refuses it, json.loads reads it.
    assert json_object(b'{"t": "\\ud83d"}', provider="X", after_output=False) == {"t": "\ud83d"}
    for bad in (b"not json", b"[1]", b"\xff\xfe"):
        with pytest.raises(ProviderError):
            json_object(bad, provider="X", after_output=False)
