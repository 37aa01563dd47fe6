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
