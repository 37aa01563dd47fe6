"""Every label the admin shows for Parley's models and django-axes's (form fields, list columns,
model and app names) has a Korean translation: an administrator whose profile says Korean sees
no English field names."""

import re

import pytest
from django.contrib import admin
from django.contrib.admin.utils import label_for_field
from django.utils import translation

APPS = {"accounts", "billing", "conversations", "axes"}  # axes ships no Korean: ours has its words


def _labels():
    for model, model_admin in admin.site._registry.items():
        if model._meta.app_label not in APPS:
            continue
        names = [f.name for f in model._meta.get_fields() if (f.concrete or f.many_to_many) and not f.auto_created]
        names += [n for n in model_admin.list_display if n != "action_checkbox" and n not in names]
        for name in names:
            yield model, model_admin, name


def _label(model, model_admin, name, language):
    with translation.override(language):
        return str(label_for_field(name, model, model_admin))


@pytest.mark.parametrize(("model", "model_admin", "name"), list(_labels()), ids=lambda v: getattr(v, "__name__", str(v)))
def test_every_admin_label_of_parleys_models_is_in_korean(model, model_admin, name):
    english = _label(model, model_admin, name, "en")
    korean = _label(model, model_admin, name, "ko")
    assert not re.search(r"[A-Za-z]{3,}", korean) or korean != english, (
        f"{model._meta.label}.{name}: '{english}' has no Korean translation"
    )


@pytest.mark.parametrize("model", [m for m in admin.site._registry if m._meta.app_label in APPS], ids=lambda m: m.__name__)
def test_every_model_and_app_name_in_the_admin_is_in_korean(model):
    def names(language):
        with translation.override(language):
            from django.apps import apps

            return (str(model._meta.verbose_name), str(model._meta.verbose_name_plural), str(apps.get_app_config(model._meta.app_label).verbose_name))

    for english, korean in zip(names("en"), names("ko"), strict=True):
        assert korean != english, f"{model._meta.label}: '{english}' has no Korean translation"


def _columns(model_admin) -> list[str]:
    names = [n for n in model_admin.list_display if n != "action_checkbox"]
    names += [f for f in model_admin.list_filter if isinstance(f, str) and f not in names]
    names += [f.name for f in model_admin.model._meta.concrete_fields if f.name not in names]
    return names


@pytest.mark.parametrize("model", [m for m in admin.site._registry if m._meta.app_label in APPS], ids=lambda m: m.__name__)
def test_two_columns_or_fields_told_apart_in_english_are_told_apart_in_korean(model):
    # The provider keys' list had two columns (and two filters) both called "상태": its state
    # (enabled, draining, disabled) and its health (healthy, failing...).
    model_admin = admin.site._registry[model]
    names = _columns(model_admin)
    english = {name: _label(model, model_admin, name, "en").lower() for name in names}
    korean = {name: _label(model, model_admin, name, "ko") for name in names}
    for a in names:
        for b in names:
            if a < b and english[a] != english[b]:
                assert korean[a] != korean[b], f"{model.__name__}: '{english[a]}' and '{english[b]}' are both '{korean[a]}'"
