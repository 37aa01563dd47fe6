import pytest


@pytest.mark.django_db
def test_the_admin_index_names_parleys_models_in_korean(client, django_user_model):
    admin = django_user_model.objects.create_superuser("관리자", "admin@example.test", "pw-not-used-1234", language="ko")
    client.force_login(admin)
    html = client.get("/admin/").content.decode()
    for korean in ("모델 가격", "제공업체 키", "사용 원장", "예산", "대화", "감사 로그", "팀"):
        assert korean in html, korean
    for english in ("Model prices", "Provider keys", "Usage records", "Audit events", "Conversations"):
        assert english not in html, english


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("url", "korean"),
    [
        ("/admin/accounts/auditevent/", "볼 감사 이벤트 선택"),
        ("/admin/billing/usagerecord/", "볼 사용 기록 선택"),
    ],
)
def test_a_read_only_list_is_titled_in_korean_without_djangos_typo(client, django_user_model, url, korean):
    # Django's Korean for "Select %s to view" is "보기위한 1%s 를(을) 선택", with a stray "1":
    # the audit log was titled "보기위한 1감사 이벤트 를(을) 선택".
    admin = django_user_model.objects.create_superuser(
        "관리자", "admin@example.test", "pw-not-used-1234", language="ko"
    )
    client.force_login(admin)
    html = client.get(url).content.decode()
    assert f"<title>{korean} | Parley 관리자</title>" in html
    assert "보기위한 1" not in html


@pytest.mark.django_db
def test_a_read_only_record_is_titled_in_korean_as_a_view_not_a_transliteration(client, django_user_model):
    # Django's Korean for "View %s" is "뷰 %s" ("view", spelt out in Hangul): the audit event's
    # page was titled "뷰 감사 이벤트".
    from accounts.models import AuditEvent

    admin = django_user_model.objects.create_superuser("관리자", "admin@example.test", "pw-not-used-1234", language="ko")
    event = AuditEvent.objects.create(action="provider_key.test", target_type="provider_key", target_id="1")
    client.force_login(admin)
    html = client.get(f"/admin/accounts/auditevent/{event.pk}/change/").content.decode()
    assert "| 감사 이벤트 보기 | Parley 관리자</title>" in html
    assert "뷰 감사" not in html
