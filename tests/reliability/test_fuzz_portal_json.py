"""Hostile JSON bodies on the portal's JSON routes: a clear 4xx, never a 5xx (issue 15).

Bodies come from Hypothesis: arbitrary JSON, and near-valid requests built from the request
models' fields (`easel_contracts.invocations.Txt2ImgRequest`, `easel_contracts.concept_uploads`)
with each field given values of every JSON type. The reliability run (bench/reliability.py) fuzzes
the same routes over HTTP against `make local`.
"""

from __future__ import annotations

import base64
import json

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from easel_contracts.concept_uploads import PresignRequest, VerifyRequest
from easel_contracts.invocations import Img2ImgRequest, Txt2ImgRequest

# JSON nested deeper than Python's parser recurses (the reliability run found 500s with these)
DEEP = st.integers(min_value=50, max_value=5000).map(lambda n: "[" * n + "]" * n)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner,
                                                                 max_size=5),
    max_leaves=20,
)
SCALARS = (st.none() | st.booleans() | st.integers(min_value=-2**63, max_value=2**64)
           | st.floats() | st.text(max_size=60) | st.lists(st.integers(), max_size=3))
FUZZ = settings(max_examples=30, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def _near_valid(model: type, base: dict) -> st.SearchStrategy[dict]:
    """`base` with some of the model's fields replaced by values of any JSON type."""
    fields = sorted(model.model_fields)
    return st.dictionaries(st.sampled_from(fields), SCALARS, max_size=4).map(
        lambda changes: {**base, **changes})


def _auth(user: str = "alice", password: str = "user-password-123") -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}", "Content-Type": "application/json"}


def _body(value: object) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def _a1111(world):
    world.add_user("alice")
    world.in_service()
    return world.client()


@FUZZ
@given(body=JSON | _near_valid(Txt2ImgRequest, {"prompt": "x", "steps": 1, "width": 64,
                                                "height": 64}))
# what the reliability run found: a body the model server refuses (400) answered with 502
@example(body={"prompt": "x", "steps": 1, "width": 64, "height": 64, "sampler_name": "0"})
def test_txt2img_never_answers_5xx(world, body):
    client = _a1111(world) if not hasattr(world, "_fuzz_client") else world._fuzz_client
    world._fuzz_client = client
    answer = client.post("/sdapi/v1/txt2img", headers=_auth(), content=_body(body))
    assert answer.status_code < 500, (body, answer.status_code, answer.text[:300])


@FUZZ
@given(body=JSON | _near_valid(Img2ImgRequest, {"prompt": "x", "init_images": ["AAAA"]}))
def test_img2img_never_answers_5xx(world, body):
    client = _a1111(world) if not hasattr(world, "_fuzz_client") else world._fuzz_client
    world._fuzz_client = client
    answer = client.post("/sdapi/v1/img2img", headers=_auth(), content=_body(body))
    assert answer.status_code < 500, (body, answer.status_code, answer.text[:300])


@FUZZ
@given(route=st.sampled_from(["presign", "verify"]),
       body=JSON | _near_valid(PresignRequest, {"set": "s", "files": [{"name": "a.png"}]})
       | _near_valid(VerifyRequest, {"set": "s", "names": ["a.png"]}))
def test_concept_upload_routes_never_answer_5xx(world, route, body):
    if not hasattr(world, "_fuzz_client"):
        world.add_user("alice")
        world._fuzz_client = world.signed_in("alice")
    answer = world._fuzz_client.post(f"/models/concepts/{route}", content=_body(body),
                                     headers={"Content-Type": "application/json"})
    assert answer.status_code < 500, (body, answer.status_code, answer.text[:300])
    assert answer.status_code in (200, 400, 422), answer.status_code


@FUZZ
@given(body=(JSON | _near_valid(Txt2ImgRequest, {})).map(_body) | DEEP.map(str.encode))
@example(body=("[" * 3000 + "]" * 3000).encode())
def test_options_never_answer_5xx(world, body):
    client = _a1111(world) if not hasattr(world, "_fuzz_client") else world._fuzz_client
    world._fuzz_client = client
    answer = client.post("/sdapi/v1/options", headers=_auth(), content=body)
    assert answer.status_code < 500, (body[:200], answer.status_code, answer.text[:300])


@FUZZ
@given(body=st.fixed_dictionaries({"endpoint": st.just("easel-demo"),
                                   "task": st.sampled_from(["txt2img", "img2img", "x"]),
                                   "payload": JSON | _near_valid(Txt2ImgRequest, {})}).map(_body)
       | JSON.map(_body) | DEEP.map(str.encode))
@example(body=("[" * 3000 + "]" * 3000).encode())
def test_the_generate_form_route_never_answers_5xx(world, body):
    if not hasattr(world, "_fuzz_client"):
        world.in_service()
        world._fuzz_client = world.signed_in("admin")
    answer = world._fuzz_client.post("/generate", content=body,
                                     headers={"Content-Type": "application/json"})
    assert answer.status_code < 500, (body[:200], answer.status_code, answer.text[:300])
