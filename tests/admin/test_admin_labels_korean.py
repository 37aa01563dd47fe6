"""Every label Parley's own admin pages show (form fields and list columns) has a Korean
translation: an administrator whose profile says Korean sees no English field names."""

import re

import pytest
from django.contrib import admin
from django.contrib.admin.utils import label_for_field
from django.utils import translation

OWN_APPS = {"accounts", "billing", "conversations"}


def _labels():
    for model, model_admin in admin.site._registry.items():
        if model._meta.app_label not in OWN_APPS:
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
