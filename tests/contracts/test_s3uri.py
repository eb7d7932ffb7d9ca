import pytest
from pydantic import BaseModel, ValidationError

from easel_contracts.s3uri import S3Uri, S3UriStr


def test_parse_splits_bucket_and_key_and_formats_back():
    uri = S3Uri.parse("s3://easel-data/models/base/model.tar.gz")
    assert (uri.bucket, uri.key) == ("easel-data", "models/base/model.tar.gz")
    assert str(uri) == "s3://easel-data/models/base/model.tar.gz"


@pytest.mark.parametrize(("text", "key"), [("s3://easel-data", ""), ("s3://easel-data/", ""),
                                           ("s3://easel-data/loras/", "loras/")])
def test_bucket_and_prefix_uris_are_prefixes(text, key):
    uri = S3Uri.parse(text)
    assert uri.key == key and uri.is_prefix


@pytest.mark.parametrize(("text", "message"), [
    ("", "is not an s3://bucket/key URI"),
    ("https://easel-data/x", "is not an s3://bucket/key URI"),
    ("s3://", "is not an s3://bucket/key URI"),
    ("s3://Easel_Data/x", "not a valid S3 bucket name"),
    ("s3://ab/x", "not a valid S3 bucket name"),
    ("s3://easel..data/x", "not a valid S3 bucket name"),
    ("s3://easel-data/concepts/alice/../bob/", "must not contain '..'"),
    ("s3://easel-data/./models/x", "must not contain '..' or '.'"),
])
def test_bad_uris_are_refused_with_a_readable_reason(text, message):
    with pytest.raises(ValueError, match=message) as raised:
        S3Uri.parse(text)
    assert "validation error" not in str(raised.value)


def test_is_under_checks_prefix_and_bucket():
    uri = S3Uri.parse("s3://easel-data/models/x.tar.gz")
    assert uri.is_under("models/", bucket="easel-data")
    assert uri.is_under("models")  # a prefix is a folder: "models" means "models/"
    assert not uri.is_under("models/", bucket="other-bucket")
    assert not S3Uri.parse("s3://easel-data/models-old/x").is_under("models")


def test_join_builds_keys_below_a_prefix():
    base = S3Uri.parse("s3://easel-data/training/job")
    assert str(base.join("checkpoints", "progress.json")) == \
        "s3://easel-data/training/job/checkpoints/progress.json"
    assert str(base.join("checkpoints/")) == "s3://easel-data/training/job/checkpoints/"
    assert str(S3Uri.of("easel-data").join("async")) == "s3://easel-data/async"


def test_join_cannot_climb_out_of_the_prefix():
    with pytest.raises(ValueError, match="must not contain '..'"):
        S3Uri.parse("s3://easel-data/loras/").join("../models/x")


def test_relative_to_strips_the_prefix():
    assert S3Uri.parse("s3://b-1/concepts/alice/dogs/1.png").relative_to("concepts/alice") == \
        "dogs/1.png"
    with pytest.raises(ValueError):
        S3Uri.parse("s3://b-1/models/x").relative_to("concepts/")


class _Holder(BaseModel):
    parsed: S3Uri
    text: S3UriStr | None = None


def test_pydantic_fields_accept_uri_strings_and_dump_them_as_strings():
    holder = _Holder(parsed="s3://easel-data/loras/", text="s3://easel-data/models/x.tar.gz")
    assert holder.parsed == S3Uri.of("easel-data", "loras/")
    assert holder.model_dump() == {"parsed": "s3://easel-data/loras/",
                                   "text": "s3://easel-data/models/x.tar.gz"}
    assert _Holder.model_validate_json(holder.model_dump_json()) == holder


def test_pydantic_fields_refuse_bad_uris():
    with pytest.raises(ValidationError, match="not an s3://bucket/key URI"):
        _Holder(parsed="s3://easel-data/x", text="/tmp/model.tar.gz")
