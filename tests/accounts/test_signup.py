import pytest
from django.contrib.auth import get_user_model

from accounts import services
from accounts.models import USERNAME_LOOKS_TAKEN

User = get_user_model()
STRONG = "plum orchard 7 lantern"


def post_signup(client, **overrides):
    data = {"username": "newbie", "email": "newbie@example.test", "password1": STRONG, "password2": STRONG}
    data.update(overrides)
    return client.post("/accounts/signup/", data)


@pytest.mark.django_db
def test_signup_makes_an_account_and_signs_in(client):
    response = post_signup(client)
    assert response.status_code == 302
    user = User.objects.get(username="newbie")
    assert user.check_password(STRONG)
    assert client.get("/accounts/profile/").status_code == 200


@pytest.mark.django_db
def test_first_account_becomes_the_only_administrator(client):
    post_signup(client)
    client.post("/accounts/logout/")
    post_signup(client, username="second", email="second@example.test")
    first, second = User.objects.get(username="newbie"), User.objects.get(username="second")
    assert first.is_superuser and first.is_staff
    assert not second.is_superuser and not second.is_staff


@pytest.mark.django_db
def test_an_existing_superuser_means_no_signup_becomes_admin(client):
    User.objects.create_superuser("root", "root@example.test", STRONG)
    post_signup(client)
    assert not User.objects.get(username="newbie").is_superuser


@pytest.mark.django_db
@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"username": "ALICE"}, "username"),
        ({"email": "ALICE@Example.Test"}, "email"),
        # Stored NFKC-normalized: a fullwidth Ａ is an A, a KELVIN SIGN a K.
        ({"username": "\uff21LICE"}, "username"),
        ({"username": "\u212aATE"}, "username"),
    ],
)
def test_taken_username_or_email_in_another_case_is_refused(client, user, make_user, overrides, field):
    make_user("kate")
    before = User.objects.count()
    response = post_signup(client, **overrides)
    assert response.status_code == 400
    assert response.context["form"].errors[field]
    assert "already" in response.content.decode()
    assert User.objects.count() == before


@pytest.mark.parametrize(
    "taken, overrides, field",
    [
        (("émile", "emile@example.test"), {"username": "Émile"}, "username"),
        (("ΣΩΚΡΑΤΗΣ", "sokrates@example.test"), {"username": "σωκρατης"}, "username"),
        (("zoe", "zoe@zoë.example"), {"email": "zoe@ZOË.example"}, "email"),
    ],
)
def test_a_name_or_email_differing_only_in_the_case_of_non_ascii_letters_is_refused(client, make_user, taken, overrides, field):
    """On every database: SQLite's own case folding stops at ASCII."""
    make_user(taken[0], email=taken[1])
    before = User.objects.count()
    response = post_signup(client, **overrides)
    assert response.status_code == 400 and response.context["form"].errors[field]
    assert User.objects.count() == before


@pytest.mark.django_db
@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"password1": "short", "password2": "short"}, "too short"),
        ({"password1": "password123", "password2": "password123"}, "too common"),
        ({"password1": "1234567890123", "password2": "1234567890123"}, "entirely numeric"),
        ({"password2": STRONG + "x"}, "do not match"),
        ({"username": "u" * 151}, "at most 150"),
        ({"email": "e" * 250 + "@example.test"}, "at most 254"),
        ({"password1": "p" * 1025, "password2": "p" * 1025}, "at most 1024"),
        ({"username": "bad name!"}, "Enter a valid username"),
        ({"email": "not-an-email"}, "valid email"),
        # "аdmin" with a Cyrillic "а" reads as "admin" in every list; a Hangul filler is blank.
        ({"username": "\u0430dmin"}, "look-alike letters"),
        ({"username": "p\u0430yp\u0430l"}, "look-alike letters"),
        ({"username": "\u115fadmin"}, "look-alike letters"),
    ],
)
def test_bad_signup_input_shows_a_message_and_makes_nothing(client, overrides, message):
    response = post_signup(client, **overrides)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not User.objects.exists()


@pytest.mark.django_db
def test_signup_while_closed_is_refused_on_the_form(client, settings):
    settings.SIGNUP_OPEN = False
    page = client.get("/accounts/signup/")
    assert "Sign-up is closed" in page.content.decode()
    for data in ({}, {"username": "ALICE", "password2": "nope"}):  # valid and invalid input alike
        response = post_signup(client, **data)
        assert response.status_code == 403
        body = response.content.decode()
        assert "Sign-up is closed" in body
        assert 'name="password1"' not in body
    assert not User.objects.exists()


@pytest.mark.django_db
def test_signup_service_refuses_when_closed(settings):
    settings.SIGNUP_OPEN = False
    with pytest.raises(services.SignupClosed):
        services.user_signup(username="x", email="x@example.test", password=STRONG)
    assert not User.objects.exists()


@pytest.mark.django_db
def test_signup_service_reports_a_race_on_the_same_name_as_taken(user, monkeypatch):
    # The check passed (as if the other insert had not committed yet); the constraint catches it.
    monkeypatch.setattr(services, "_check_identity_free", lambda **kw: None, raising=True)
    from django.db import IntegrityError

    with pytest.raises(IntegrityError):
        services.user_signup(username="Alice", email="other@example.test", password=STRONG)
    assert User.objects.filter(username__iexact="alice").count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("username", ["김철수", "kim김", "Алиса", "jo.sé"])
def test_names_in_one_alphabet_or_latin_with_hangul_are_welcome(client, username):
    response = post_signup(client, username=username)
    assert response.status_code == 302 and User.objects.filter(username=username).exists()


# Each pair: an existing name, and a new one that would look the same on the screen without
# mixing alphabets (what test_bad_signup_input_shows_a_message_and_makes_nothing refuses).
LOOK_ALIKES = [
    ("paypal", "\u0440\u0430\u0443\u0440\u04301"),  # "раура1": all Cyrillic, and a "1" for the "l"
    ("scope", "\u0455\u0441\u043e\u0440\u0435"),  # "ѕсоре": all Cyrillic
    ("ABE", "\u0391\u0392\u0395"),  # "ΑΒΕ": Greek capitals
    ("anna", "\u0391\u039d\u039d\u0391"),  # "ΑΝΝΑ" looks like "ANNA", which is anna's name in capitals
    ("admin", "adrnin"),  # Latin alone: "rn" reads as "m"
    ("alice", "aIice"),  # a capital I for the l
]


@pytest.mark.django_db
@pytest.mark.parametrize("taken, username", LOOK_ALIKES)
def test_signup_refuses_a_name_that_looks_the_same_as_an_existing_one(client, make_user, taken, username):
    make_user(taken)
    response = post_signup(client, username=username)
    assert response.status_code == 400
    [error] = response.context["form"].errors["username"]
    assert "looks the same as an existing username" in error
    assert not User.objects.filter(username=username).exists()


@pytest.mark.django_db
def test_signup_service_refuses_a_look_alike_of_an_existing_name(make_user):
    from django.core.exceptions import ValidationError

    make_user("paypal")
    with pytest.raises(ValidationError) as refused:
        services.user_signup(username="\u0440\u0430\u0443\u0440\u04301", email="p@example.test", password=STRONG)
    assert refused.value.message_dict["username"] == [str(USERNAME_LOOKS_TAKEN)]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "username",
    ["иван", "Ольга", "рома", "김영희", "Αλέξανδρος", "παύλος", "user2", "paypal2", "Алиса"],
)
def test_names_in_other_alphabets_that_look_like_no_existing_name_are_welcome(client, make_user, username):
    for taken in ("paypal", "ivan", "olga", "roma", "김철수", "alexandros", "pavlos", "user1", "alice"):
        make_user(taken)
    response = post_signup(client, username=username)
    assert response.status_code == 302 and User.objects.filter(username=username).exists()


@pytest.mark.parametrize(
    "username",
    ["bad name!", "\u0430dmin", "p\u0430yp\u0430l", "\u115fadmin", "u" * 151, "\u0430" * 151, "kim김", "mina.lee+work@home"],
)
def test_the_signup_form_refuses_a_username_exactly_as_the_account_does(username):
    """The sign-up page's field-by-field errors are the account's own rules, each reason told
    once: a rule added to the username reaches the form too."""
    from django.core.exceptions import ValidationError

    from accounts.forms import SignupForm

    try:
        User._meta.get_field("username").run_validators(username)
    except ValidationError as refused:
        expected = refused.messages
    else:
        expected = []
    form = SignupForm(data={"username": username, "email": "new@example.test", "password1": STRONG, "password2": STRONG})
    form.is_valid()
    assert form.errors.get("username", []) == expected
