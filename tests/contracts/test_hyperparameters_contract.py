"""Portal form -> SageMaker's string hyperparameters -> trainer: the same values on both sides.

Every form here is one the portal's training page can submit (its fields over their shown
defaults, bounds and choices, as a browser sends them: strings, a ticked box "true" after its
hidden "false"). Each goes through the portal's form parser, the SageMaker string dict (through
JSON, as /opt/ml/input/config/hyperparameters.json) and the trainer's parser, and must come out
with the values the form showed.
"""

from __future__ import annotations

import json

import pytest

from easel_contracts.hyperparameters import HyperParameterError, HyperParameters, field_schemas
from easel_webui.errors import PortalError
from easel_webui.training import form_fields, hyperparameters_from_form

FIELDS = {field.name: field for field in form_fields()}
SCHEMAS = field_schemas()
# settings a value needs beside it to be valid (the form says so in its help text)
COMPANIONS = {
    "with_prior_preservation": {"class_prompt": "a photo of a dog"},
    "lr_warmup_steps": {"max_train_steps": str(FIELDS["max_train_steps"].maximum)},
}
TEXT_SAMPLES = {"output_name": "a" * 100}


def _as_browser_sends(field, value) -> str:
    if field.widget == "checkbox":
        return "true" if value else "false"
    return str(value)  # what the page renders into value="..."


def _default_form() -> dict[str, str]:
    form = {name: _as_browser_sends(field, field.default) for name, field in FIELDS.items()}
    form["instance_prompt"] = "a photo of sks dog"
    return form


def _forms():
    yield "defaults", _default_form()
    for name, field in FIELDS.items():
        values = []
        if field.widget == "number":
            values = [bound for bound in (field.minimum, field.maximum) if bound is not None]
        elif field.widget == "select":
            values = list(field.choices)
        elif field.widget == "checkbox":
            values = [True, False]
        elif field.maxlength:
            values = [TEXT_SAMPLES.get(name, "x" * field.maxlength)]
        for value in values:
            form = {**_default_form(), **COMPANIONS.get(name, {})}
            form[name] = _as_browser_sends(field, value)
            yield f"{name}={str(value)[:12]}", form


FORMS = list(_forms())


def _shown(field, text: str):
    """The value a person reads in the form's field."""
    if field.widget == "checkbox":
        return text == "true"
    if field.widget == "number":
        return float(text) if text.strip() else None
    if not text.strip() and SCHEMAS[field.name]["derived"]:
        return None  # left empty: the trainer derives it
    return text.strip()


@pytest.mark.parametrize(("label", "form"), FORMS, ids=[label for label, _ in FORMS])
def test_the_trainer_reads_what_the_form_submitted(label, form):
    portal = hyperparameters_from_form(form)
    sent = json.loads(json.dumps(portal.to_sagemaker()))
    assert all(isinstance(value, str) for value in sent.values())
    trainer = HyperParameters.from_strings(sent)
    assert trainer == portal
    for name, field in FIELDS.items():
        shown, trained = _shown(field, form[name]), getattr(trainer, name)
        if field.widget == "number" and shown is not None:
            assert float(trained) == shown, name
        else:
            assert trained == shown, name


def test_the_forms_cover_every_field_and_bound():
    varied = {label.split("=")[0] for label, _ in FORMS[1:]}
    assert varied == set(FIELDS) == set(HyperParameters.model_fields)
    for name, field in FIELDS.items():
        if field.widget == "number":
            sent = {form[name] for label, form in FORMS if label.startswith(name + "=")}
            bounds = {str(b) for b in (field.minimum, field.maximum) if b is not None}
            assert sent == bounds, name


def _outside(field):
    """Values just past the bounds the form's number field allows."""
    step = 1 if field.step == "any" else field.step
    if field.minimum is not None:
        yield field.minimum - (step if isinstance(field.minimum, int) else 1e-9)
    if field.maximum is not None:
        yield field.maximum + (step if isinstance(field.maximum, int) else 1e-6)


@pytest.mark.parametrize("name", [name for name, field in FIELDS.items()
                                  if field.widget == "number"])
def test_past_the_forms_bounds_both_sides_refuse(name):
    field = FIELDS[name]
    for value in _outside(field):
        form = {**_default_form(), **COMPANIONS.get(name, {}), name: str(value)}
        with pytest.raises(PortalError, match=name.replace("_", " ")):
            hyperparameters_from_form(form)
        with pytest.raises(HyperParameterError) as caught:
            HyperParameters.from_strings({**form, name: str(value)})
        assert [problem for problem, _ in caught.value.problems] == [name]
