"""The helper CLIs against `make local`'s emulator, through the variables it exports."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

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


def test_an_uncompressed_upload_lands_as_a_file_in_the_local_s3(local_env, tmp_path, capsys):
    from local.emulator.s3_state import EmulatorFiles

    # over the part size (5 MiB parts): a multipart upload, the path a multi-GB checkpoint takes
    ckpt = write_safetensors(tmp_path / "big.safetensors", sd1_keys(6 * 1024 * 1024))  # 12 MiB
    assert upload_model.main([str(ckpt), "--uncompressed", "--quiet", "--part-size", "5",
                              "--state-dir", str(tmp_path / "s")]) == 0
    bucket = local_env.env["EASEL_BUCKET"]
    assert capsys.readouterr().out.strip() == f"s3://{bucket}/models/big/"

    key = "models/big/Stable-diffusion/big.safetensors"
    where = EmulatorFiles(local_env.emulator_url).locate(bucket, key)
    assert where is not None, "a multi-part model file should be kept as a file by the local S3"
    assert Path(where["path"]).read_bytes() == ckpt.read_bytes()
