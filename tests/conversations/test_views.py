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


def test_a_deleted_conversations_page_says_so_in_the_sites_layout_with_a_way_back(client, user, settings, chat_backends):
    # A bookmark or a second tab's reload after a delete: not Django's bare "Not Found" page in
    # English, but the site's header and a link back to the chat, in the person's language.
    settings.DEBUG = False
    conversation = Conversation.objects.create(owner=user, model="demo:echo", title="Gone")
    conversation_id = conversation.id
    conversation.delete()
    user.language = "ko"
    user.save(update_fields=["language"])
    client.force_login(user)
    response = client.get(f"/c/{conversation_id}/")
    assert response.status_code == 404
    html = response.content.decode()
    assert 'class="site-header"' in html and 'lang="ko"' in html
    assert 'href="/"' in html and "The requested resource was not found" not in html
