import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

from billing.crypto import SecretUndecryptable, secret_decrypt, secret_encrypt, secret_reencrypt

SECRET = "sk-test-0123456789abcdefghij"


def test_round_trip_with_configured_keys(settings):
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    token = secret_encrypt(SECRET)
    assert SECRET not in token
    assert secret_decrypt(token) == SECRET


def test_first_key_encrypts_and_every_key_decrypts(settings):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [old]
    token = secret_encrypt(SECRET)
    settings.FIELD_ENCRYPTION_KEYS = [new, old]
    assert secret_decrypt(token) == SECRET  # the old key still decrypts
    assert Fernet(new.encode()).decrypt(secret_encrypt(SECRET).encode()).decode() == SECRET  # the new one encrypts


def test_reencrypt_moves_a_secret_to_the_first_key(settings):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [old]
    token = secret_encrypt(SECRET)
    settings.FIELD_ENCRYPTION_KEYS = [new, old]
    rotated = secret_reencrypt(token)
    settings.FIELD_ENCRYPTION_KEYS = [new]
    assert secret_decrypt(rotated) == SECRET
    with pytest.raises(SecretUndecryptable):
        secret_decrypt(token)


def test_unset_keys_derive_from_the_secret_key(settings):
    settings.FIELD_ENCRYPTION_KEYS = []
    token = secret_encrypt(SECRET)
    assert secret_decrypt(token) == SECRET
    settings.SECRET_KEY = "another-secret-key-entirely-0123456789-abcdefghijklmnopqrstuvwxyz"
    with pytest.raises(SecretUndecryptable):
        secret_decrypt(token)


def test_unset_keys_warn_in_serving_processes(settings, caplog, monkeypatch):
    import billing.crypto

    monkeypatch.setattr(billing.crypto, "_warned", False)
    settings.FIELD_ENCRYPTION_KEYS = []
    settings.WARN_DEV_DEFAULTS = True  # as in a serving process (Daphne, Celery)
    with caplog.at_level("WARNING", logger="billing.crypto"):
        secret_encrypt(SECRET)
    assert "FIELD_ENCRYPTION_KEYS is not set" in caplog.text


def test_a_malformed_key_is_named_by_position_never_echoed(settings):
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode(), "not-a-real-fernet-key-CANARY"]
    with pytest.raises(ImproperlyConfigured) as excinfo:
        secret_encrypt(SECRET)
    assert "entry 2" in str(excinfo.value)
    assert "CANARY" not in str(excinfo.value)


def test_undecryptable_error_holds_no_key_material(settings):
    key = Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [key]
    token = secret_encrypt(SECRET)
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(SecretUndecryptable) as excinfo:
        secret_decrypt(token)
    assert key not in str(excinfo.value) and SECRET not in str(excinfo.value) and token not in str(excinfo.value)


def test_a_secret_from_the_derived_default_still_decrypts_once_keys_are_configured(settings):
    settings.FIELD_ENCRYPTION_KEYS = []
    token = secret_encrypt(SECRET)
    new = Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [new]
    assert secret_decrypt(token) == SECRET
    rotated = secret_reencrypt(token)
    # Re-encrypted under the configured key, which alone now opens it.
    assert Fernet(new.encode()).decrypt(rotated.encode()).decode() == SECRET
    assert Fernet(new.encode()).decrypt(secret_encrypt(SECRET).encode()).decode() == SECRET
