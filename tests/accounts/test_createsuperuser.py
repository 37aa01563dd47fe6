"""`manage.py createsuperuser` refuses the names sign-up refuses, with sign-up's message."""

import io

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.management.commands import createsuperuser as django_createsuperuser
from django.core.management import call_command
from django.core.management.base import CommandError

from accounts.models import EMAIL_TAKEN, USERNAME_LOOKS_TAKEN, USERNAME_TAKEN

User = get_user_model()
CYRILLIC_PAYPAL = "\u0440\u0430\u0443\u0440\u04301"  # "раура1": all Cyrillic, one alphabet
STRONG = "plum orchard 7 lantern"


@pytest.fixture
def paypal(make_user):
    return make_user("paypal", email="paypal@example.test")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "username, message",
    [(CYRILLIC_PAYPAL, USERNAME_LOOKS_TAKEN), ("paypa1", USERNAME_LOOKS_TAKEN), ("PayPal", USERNAME_TAKEN)],
)
def test_a_name_that_looks_like_a_taken_one_is_refused_with_the_signup_message(paypal, username, message, monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", STRONG)
    with pytest.raises(CommandError) as refused:
        call_command("createsuperuser", interactive=False, username=username, email="boss@example.test", stdout=io.StringIO())
    assert str(message) in str(refused.value)
    assert list(User.objects.values_list("username", flat=True)) == ["paypal"]


@pytest.mark.django_db
def test_a_taken_email_is_refused_with_the_signup_message_not_a_traceback(paypal):
    with pytest.raises(CommandError) as refused:
        call_command("createsuperuser", interactive=False, username="boss", email="PAYPAL@example.test", stdout=io.StringIO())
    assert str(EMAIL_TAKEN) in str(refused.value)
    assert User.objects.count() == 1


@pytest.mark.django_db
def test_a_name_like_no_other_makes_the_superuser(paypal, monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", STRONG)
    call_command("createsuperuser", interactive=False, username="boss", email="boss@example.test", stdout=io.StringIO())
    boss = User.objects.get(username="boss")
    assert boss.is_superuser and boss.is_staff and boss.check_password(STRONG)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.django_db
def test_interactively_a_lookalike_is_refused_and_asked_again(paypal, monkeypatch):
    """As Django's own tests drive the prompt: input() and getpass() answer in turn. The refused
    name is said as sign-up says it, and the next one typed is taken."""
    answers = iter([CYRILLIC_PAYPAL, "boss", "boss@example.test"])
    monkeypatch.setattr(django_createsuperuser, "input", lambda prompt="": next(answers), raising=False)
    monkeypatch.setattr(django_createsuperuser.getpass, "getpass", lambda prompt="Password: ": STRONG)
    stderr = io.StringIO()
    call_command("createsuperuser", interactive=True, stdin=_Terminal(), stdout=io.StringIO(), stderr=stderr)
    assert str(USERNAME_LOOKS_TAKEN) in stderr.getvalue()
    assert User.objects.get(username="boss").is_superuser
    assert not User.objects.filter(username=CYRILLIC_PAYPAL).exists()
