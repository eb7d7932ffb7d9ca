"""The helper CLIs against `make local`'s emulator, through the variables it exports."""

from __future__ import annotations

import io
import tarfile

import boto3
import pytest
from script_support import sd1_keys, write_safetensors

from scripts import admin_password, upload_model

runtime = pytest.importorskip("local.runtime")
pytestmark = pytest.mark.slow


@pytest.fixture
def local_env(tmp_path, monkeypatch):
    with runtime.LocalAws(tmp_path / "state", clean=True) as local:
        for name in ("EASEL_STACK", "EASEL_STAGE", "AWS_REGION"):
            monkeypatch.delenv(name, raising=False)
        for name, value in local.env.items():
            monkeypatch.setenv(name, value)
        yield local


def test_admin_password_and_upload_work_against_local_mode(local_env, tmp_path, capsys):
    assert admin_password.main(["get"]) == 0
    assert capsys.readouterr().out.strip() == local_env.admin_password

    ckpt = write_safetensors(tmp_path / "base.safetensors", sd1_keys())
    assert upload_model.main([str(ckpt), "--quiet", "--state-dir", str(tmp_path / "s")]) == 0
    bucket = local_env.env["EASEL_BUCKET"]
    assert capsys.readouterr().out.strip() == f"s3://{bucket}/models/base/model.tar.gz"
    s3 = boto3.client("s3", region_name=local_env.env["AWS_DEFAULT_REGION"])
    body = s3.get_object(Bucket=bucket, Key="models/base/model.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        assert tar.getnames() == ["Stable-diffusion/base.safetensors"]
