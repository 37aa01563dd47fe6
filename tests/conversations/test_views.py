import pytest

from conversations.models import Conversation

pytestmark = pytest.mark.django_db


def test_the_chat_page_sends_anonymous_users_to_login(client):
    response = client.get("/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_the_chat_page_renders_without_inline_script(client, user, chat_backends):
    client.force_login(user)
    conversation = Conversation.objects.create(owner=user, model="demo:echo", title="</script><b>x</b>")
    response = client.get(f"/c/{conversation.id}/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="chat-config"' in html and "js/chat.js" in html
    # The only <script> elements: the JSON data block and the external file.
    assert html.count("<script") == 2
    assert "</script><b>x</b>" not in html


def test_another_users_conversation_page_is_404(client, user, other_user, chat_backends):
    theirs = Conversation.objects.create(owner=other_user, model="demo:echo")
    client.force_login(user)
    assert client.get(f"/c/{theirs.id}/").status_code == 404
