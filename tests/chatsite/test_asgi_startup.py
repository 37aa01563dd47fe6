"""What the ASGI process does at startup beside serving: warm the SDKs and the token encoding,
then freeze the heap startup made so full garbage collections skip it."""

import gc
import weakref

import pytest


@pytest.fixture
def asgi_imported():
    """The module, imported before the test runs: its first import sets Django up again, which
    reconfigures logging and drops the handler caplog put on the root logger for that phase. (Not
    at the top of this file: imported while tests are collected, its startup work would run in the
    test process before every other test.)"""
    from chatsite import asgi

    return asgi


class _Node:
    pass


def test_startup_freezes_its_heap_but_not_its_garbage():
    from chatsite import asgi

    cycle = _Node()
    cycle.self = cycle  # garbage only the cycle collector can free
    gone = weakref.ref(cycle)
    del cycle
    kept = _Node()
    gc.unfreeze()
    try:
        asgi.warm_up_and_freeze()
        frozen = gc.get_freeze_count()
        assert gone() is None  # collected first, not frozen with the rest
        assert frozen > 50_000  # modules, Django, both SDKs, the encodings
        assert not any(o is kept for o in gc.get_objects())  # the live heap now sits apart
    finally:
        gc.unfreeze()


def test_startup_says_in_one_line_when_static_files_are_not_collected(settings, tmp_path, caplog):
    from chatsite import asgi

    settings.STATIC_ROOT = tmp_path / "staticfiles"
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
    }
    asgi.static_files_check()
    [record] = [r for r in caplog.records if "collectstatic" in r.getMessage()]
    assert record.levelname == "ERROR" and not record.exc_info
    assert "\n" not in record.getMessage()


def test_startup_says_nothing_of_static_files_where_pages_name_them_as_they_are(caplog):
    from chatsite import asgi

    asgi.static_files_check()
    assert not [r for r in caplog.records if "collectstatic" in r.getMessage()]


def test_startup_says_in_one_line_when_the_default_model_has_no_price(asgi_imported, settings, caplog, db):
    # Every new chat starts on DEFAULT_MODEL: without a price each of their messages is refused.
    settings.DEFAULT_MODEL = "openai:gpt-unpriced"
    asgi_imported.default_model_check()
    [record] = [r for r in caplog.records if "DEFAULT_MODEL" in r.getMessage()]
    assert record.levelname == "ERROR" and not record.exc_info
    assert "openai:gpt-unpriced" in record.getMessage() and "set_price" in record.getMessage()
    assert "\n" not in record.getMessage()


def test_startup_says_nothing_of_a_priced_default_model(asgi_imported, settings, caplog, db):
    settings.DEFAULT_MODEL = "demo:echo"
    asgi_imported.default_model_check()
    assert not [r for r in caplog.records if "DEFAULT_MODEL" in r.getMessage()]
