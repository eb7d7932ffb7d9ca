"""upload_model: checks, packing into the model layout, multipart upload, resume, LoRAs."""

from __future__ import annotations

import io
import os
import tarfile

import botocore.client
import pytest
from script_support import BUCKET, lora_keys, sd1_keys, write_safetensors

from scripts import upload_model

MIB = 1024 * 1024


def _run(capsys, *argv):
    code = upload_model.main([*map(str, argv), "--quiet"])
    out, err = capsys.readouterr()
    return code, out, err


def _members(session, key):
    body = session.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_checkpoint_file_becomes_a_model_tar_gz_and_the_uri_is_printed(stack, tmp_path, capsys):
    ckpt = write_safetensors(tmp_path / "My Model.safetensors", sd1_keys())
    (tmp_path / "My Model.yaml").write_text("model: {}\n")
    code, out, err = _run(capsys, ckpt, "--state-dir", tmp_path / "state")
    assert code == 0, err
    assert out.strip() == f"s3://{BUCKET}/models/My-Model/model.tar.gz"
    members = _members(stack, "models/My-Model/model.tar.gz")
    assert members["Stable-diffusion/My-Model.safetensors"] == ckpt.read_bytes()
    assert members["Stable-diffusion/My-Model.yaml"] == b"model: {}\n"
    assert "SD1.x checkpoint" in err


def test_a1111_folder_keeps_its_layout(stack, tmp_path, capsys):
    root = tmp_path / "models"
    write_safetensors(root / "Stable-diffusion" / "base.safetensors", sd1_keys())
    write_safetensors(root / "Lora" / "style.safetensors", lora_keys())
    (root / "Lora" / "Put LoRAs here.txt").write_text("hint")
    code, out, err = _run(capsys, root, "--name", "studio", "--state-dir", tmp_path / "s")
    assert code == 0, err
    assert set(_members(stack, "models/studio/model.tar.gz")) == {
        "Stable-diffusion/base.safetensors", "Lora/style.safetensors"}
    assert "skipped" in err


def test_uncompressed_upload_goes_to_a_prefix(stack, tmp_path, capsys):
    ckpt = write_safetensors(tmp_path / "base.safetensors", sd1_keys())
    code, out, err = _run(capsys, ckpt, "--uncompressed", "--state-dir", tmp_path / "s")
    assert code == 0, err
    assert out.strip() == f"s3://{BUCKET}/models/base/"
    body = stack.client("s3").get_object(
        Bucket=BUCKET, Key="models/base/Stable-diffusion/base.safetensors")["Body"].read()
    assert body == ckpt.read_bytes()


def test_lora_goes_into_the_lora_library(stack, tmp_path, capsys):
    lora = write_safetensors(tmp_path / "ink.safetensors", lora_keys())
    code, out, err = _run(capsys, lora, "--lora", "--state-dir", tmp_path / "s")
    assert code == 0, err
    assert out.strip() == f"s3://{BUCKET}/loras/ink.safetensors"
    assert "<lora:ink:1>" in err


def test_lora_without_the_flag_is_refused_with_the_fix(stack, tmp_path, capsys):
    lora = write_safetensors(tmp_path / "ink.safetensors", lora_keys())
    code, out, err = _run(capsys, lora, "--state-dir", tmp_path / "s")
    assert code == 1
    assert "pass --lora" in err and out == ""


def test_bad_file_is_refused_before_anything_is_uploaded(stack, tmp_path, capsys):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00" * 64)
    code, _, err = _run(capsys, bad, "--state-dir", tmp_path / "s")
    assert code == 1
    assert "broken.safetensors" in err and "not a safetensors file" in err
    assert stack.client("s3").list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0


def test_unknown_family_is_refused(stack, tmp_path, capsys):
    odd = write_safetensors(tmp_path / "odd.safetensors", {"model.diffusion_model.x": ([4], 0)})
    code, _, err = _run(capsys, odd, "--state-dir", tmp_path / "s")
    assert code == 1 and "no denoiser of a supported family" in err and "FLUX.1 dev" in err


def test_ckpt_is_converted_on_upload(stack, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    torch.save({"state_dict": {
        "cond_stage_model.transformer.text_model.w": torch.ones(2, 2),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight":
            torch.zeros(4, 768)}}, tmp_path / "old.ckpt")
    code, out, err = _run(capsys, tmp_path / "old.ckpt", "--state-dir", tmp_path / "s")
    assert code == 0, err
    assert "converted from old.ckpt" in err
    assert list(_members(stack, "models/old/model.tar.gz")) == ["Stable-diffusion/old.safetensors"]


def test_existing_model_is_not_overwritten_without_the_flag(stack, tmp_path, capsys):
    ckpt = write_safetensors(tmp_path / "base.safetensors", sd1_keys())
    assert _run(capsys, ckpt, "--state-dir", tmp_path / "s")[0] == 0
    code, _, err = _run(capsys, ckpt, "--state-dir", tmp_path / "s")
    assert code == 1 and "already exists" in err and "--overwrite" in err
    assert _run(capsys, ckpt, "--overwrite", "--state-dir", tmp_path / "s")[0] == 0


def test_wrong_stack_name_says_what_was_looked_up_where(stack, tmp_path, capsys):
    ckpt = write_safetensors(tmp_path / "base.safetensors", sd1_keys())
    code, _, err = _run(capsys, ckpt, "--stack", "nope", "--state-dir", tmp_path / "s")
    assert code == 1
    assert "'nope'" in err and "us-east-1" in err and "--stack" in err


class _Counter:
    """Counts UploadPart calls; raises on the call numbered `fail_on` (a dropped connection)."""

    def __init__(self, fail_on=None):
        self.calls = 0
        self.fail_on = fail_on
        self.original = botocore.client.BaseClient._make_api_call

    def __call__(self, client, operation, params):
        if operation == "UploadPart":
            self.calls += 1
            if self.calls == self.fail_on:
                raise ConnectionResetError("connection reset by peer")
        return self.original(client, operation, params)


def test_interrupted_upload_resumes_sending_only_the_missing_parts(
        stack, tmp_path, capsys, monkeypatch):
    big = os.urandom(17 * MIB)  # incompressible: about 4 parts of 5 MiB
    keys = {**sd1_keys(), "first_stage_model.decoder.big": ([len(big) // 2], 0)}
    ckpt = write_safetensors(tmp_path / "big.safetensors", keys, filler=bytes(20000) + big)
    state = tmp_path / "state"
    args = (ckpt, "--part-size", "5", "--jobs", "2", "--state-dir", state)

    first = _Counter(fail_on=3)
    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call",
                        lambda c, o, p: first(c, o, p))
    code, out, err = _run(capsys, *args)
    assert code == 1 and "Run the same command again to resume" in err and out == ""
    assert list(state.glob("*.json")), "the state file must survive the interruption"

    s3 = stack.client("s3")
    uploads = s3.list_multipart_uploads(Bucket=BUCKET)["Uploads"]
    held = s3.list_parts(Bucket=BUCKET, Key="models/big/model.tar.gz",
                         UploadId=uploads[0]["UploadId"]).get("Parts", [])
    assert held, "some parts reached S3 before the interruption"

    second = _Counter()
    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call",
                        lambda c, o, p: second(c, o, p))
    code, out, err = _run(capsys, *args)
    assert code == 0, err
    total_parts = -(-s3.head_object(Bucket=BUCKET, Key="models/big/model.tar.gz")["ContentLength"]
                    // (5 * MIB))
    assert second.calls == total_parts - len(held)
    assert f"{len(held)} already in S3" in err
    assert _members(stack, "models/big/model.tar.gz")["Stable-diffusion/big.safetensors"] == \
        ckpt.read_bytes()
    assert not list(state.glob("*.json")), "a finished upload leaves no state behind"


def test_interrupted_uncompressed_upload_resumes_file_by_file(stack, tmp_path, capsys,
                                                              monkeypatch):
    root = tmp_path / "models"
    big = os.urandom(11 * MIB)  # 3 parts of 5 MiB
    keys = {**sd1_keys(), "first_stage_model.decoder.big": ([len(big) // 2], 0)}
    write_safetensors(root / "Stable-diffusion" / "base.safetensors", keys,
                      filler=bytes(20000) + big)
    write_safetensors(root / "Lora" / "ink.safetensors", lora_keys())
    args = (root, "--uncompressed", "--name", "kit", "--part-size", "5", "--jobs", "1",
            "--state-dir", tmp_path / "state")

    first = _Counter(fail_on=2)
    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call",
                        lambda c, o, p: first(c, o, p))
    assert _run(capsys, *args)[0] == 1

    second = _Counter()
    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call",
                        lambda c, o, p: second(c, o, p))
    code, out, err = _run(capsys, *args)
    assert code == 0, err
    assert second.calls == 2, "part 1 reached S3 before the interruption; parts 2 and 3 remain"
    s3 = stack.client("s3")
    body = s3.get_object(Bucket=BUCKET, Key="models/kit/Stable-diffusion/base.safetensors")
    assert body["Body"].read() == (root / "Stable-diffusion" / "base.safetensors").read_bytes()
    assert s3.head_object(Bucket=BUCKET, Key="models/kit/Lora/ink.safetensors")


def _manifest(session, key):
    from easel_contracts.model_manifest import parse_manifest

    body = session.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return parse_manifest(body, where=key)


def test_archive_upload_writes_a_manifest_beside_it(stack, tmp_path, capsys):
    ckpt = write_safetensors(tmp_path / "base.safetensors", sd1_keys())
    code, _, err = _run(capsys, ckpt, "--state-dir", tmp_path / "s")
    assert code == 0, err
    manifest = _manifest(stack, "models/base/easel-model.json")
    assert manifest.layout == "archive" and manifest.written_by == "upload_model"
    assert [(c.name, c.path, c.family.value) for c in manifest.checkpoints] == [
        ("base", "Stable-diffusion/base.safetensors", "sd1")]
    assert manifest.total_bytes == ckpt.stat().st_size


def test_uncompressed_upload_writes_its_manifest_in_the_prefix(stack, tmp_path, capsys):
    ckpt = write_safetensors(tmp_path / "base.safetensors", sd1_keys())
    code, _, err = _run(capsys, ckpt, "--uncompressed", "--state-dir", tmp_path / "s")
    assert code == 0, err
    assert _manifest(stack, "models/base/easel-model.json").layout == "folder"


FLUX_KEYS = {"double_blocks.0.img_attn.norm.key_norm.scale": ([8], 0),
             "guidance_in.in_layer.bias": ([8], 0), "img_in.weight": ([8, 64], 0)}


def test_flux_checkpoint_alone_is_refused_naming_the_missing_files(stack, tmp_path, capsys):
    ckpt = write_safetensors(tmp_path / "flux.safetensors", FLUX_KEYS)
    code, _, err = _run(capsys, ckpt, "--state-dir", tmp_path / "s")
    assert code == 1
    assert "FLUX.1 dev checkpoint without text_encoder/clip_l.safetensors, " \
        "text_encoder/t5xxl.safetensors, VAE/ae.safetensors, text_encoder/spiece.model" in err
    assert stack.client("s3").list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0


def _spiece(pieces: int) -> bytes:
    """A SentencePiece ModelProto holding `pieces` pieces (field 1, each a piece string)."""
    out = bytearray()
    for index in range(pieces):
        text = f"p{index}".encode()
        piece = b"\x0a" + bytes([len(text)]) + text
        out += b"\x0a" + bytes([len(piece)]) + piece
    return bytes(out)


def _flux_folder(root, *, t5_rows=16, pieces=8):
    write_safetensors(root / "Stable-diffusion" / "flux.safetensors", FLUX_KEYS)
    write_safetensors(root / "text_encoder" / "clip_l.safetensors",
                      {"text_model.final_layer_norm.weight": ([8], 0)})
    write_safetensors(root / "text_encoder" / "t5xxl.safetensors",
                      {"encoder.block.0.layer.0.SelfAttention.q.weight": ([8, 8], 0),
                       "shared.weight": ([t5_rows, 2], 0)})
    (root / "text_encoder" / "spiece.model").write_bytes(_spiece(pieces))
    write_safetensors(root / "VAE" / "ae.safetensors", {"decoder.conv_in.weight": ([8], 0)})
    return root


def test_flux_folder_with_its_parts_is_uploaded_and_its_family_recorded(stack, tmp_path, capsys):
    root = _flux_folder(tmp_path / "models")
    code, _, err = _run(capsys, root, "--name", "flux", "--state-dir", tmp_path / "s")
    assert code == 0, err
    assert set(_members(stack, "models/flux/model.tar.gz")) == {
        "Stable-diffusion/flux.safetensors", "text_encoder/clip_l.safetensors",
        "text_encoder/t5xxl.safetensors", "text_encoder/spiece.model", "VAE/ae.safetensors"}
    manifest = _manifest(stack, "models/flux/easel-model.json")
    assert manifest.families[0].value == "flux_dev"


def test_real_size_t5_with_a_toy_tokenizer_is_refused(stack, tmp_path, capsys):
    root = _flux_folder(tmp_path / "models", t5_rows=32128, pieces=8)
    code, _, err = _run(capsys, root, "--name", "flux", "--state-dir", tmp_path / "s")
    assert code == 1
    assert "real-size (32128 tokens)" in err and "8 pieces, not T5's 32000" in err
    assert stack.client("s3").list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0


def test_real_size_t5_with_t5s_own_tokenizer_is_accepted(stack, tmp_path, capsys):
    root = _flux_folder(tmp_path / "models", t5_rows=32128, pieces=32000)
    code, _, err = _run(capsys, root, "--name", "flux", "--state-dir", tmp_path / "s")
    assert code == 0, err


def test_tokenizer_larger_than_the_t5_embedding_is_refused(stack, tmp_path, capsys):
    root = _flux_folder(tmp_path / "models", t5_rows=16, pieces=20)
    code, _, err = _run(capsys, root, "--name", "flux", "--state-dir", tmp_path / "s")
    assert code == 1 and "do not belong together" in err


def test_lora_upload_writes_no_manifest(stack, tmp_path, capsys):
    lora = write_safetensors(tmp_path / "ink.safetensors", lora_keys())
    assert _run(capsys, lora, "--lora", "--state-dir", tmp_path / "s")[0] == 0
    keys = [o["Key"] for o in stack.client("s3").list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert keys == ["loras/ink.safetensors"]


def test_flux2_file_is_refused_saying_which_family_it_is(stack, tmp_path, capsys):
    keys = {"double_blocks.0.img_attn.norm.key_norm.scale": ([8], 0),
            "single_stream_modulation.lin.weight": ([8, 8], 0)}
    code, _, err = _run(capsys, write_safetensors(tmp_path / "f2.safetensors", keys),
                        "--state-dir", tmp_path / "s")
    assert code == 1 and "FLUX.2 is not supported" in err


@pytest.mark.parametrize(("url", "local"), [
    ("http://127.0.0.1:4566", True), ("http://localhost:9000", True), ("http://[::1]:80", True),
    ("https://s3.us-east-1.amazonaws.com", False), ("http://10.0.0.5:9000", False),
])
def test_only_an_s3_on_this_machine_counts_as_loopback(url, local) -> None:
    assert upload_model.is_loopback(url) is local


def _uploaded_part_headers(monkeypatch, endpoint: str | None) -> dict[str, str]:
    """The headers of one UploadPart from the script's S3 client (stopped before it is sent)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "local")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "local")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    if endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    else:
        monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    _, s3 = upload_model._resolve_bucket(
        upload_model.build_parser().parse_args(["model.safetensors", "--bucket", BUCKET]))
    seen: dict[str, str] = {}

    class Stop(Exception):
        pass

    def capture(request, **_kwargs):
        seen.update({k.lower(): str(v) for k, v in request.headers.items()})
        raise Stop

    s3.meta.events.register("before-send.s3.UploadPart", capture)
    with pytest.raises(Stop):
        s3.upload_part(Bucket=BUCKET, Key="k", UploadId="u", PartNumber=1, Body=b"x" * 64)
    return seen


def test_parts_sent_to_the_local_s3_carry_no_crc32_pass(monkeypatch) -> None:
    headers = _uploaded_part_headers(monkeypatch, "http://127.0.0.1:4566")
    assert not [name for name in headers if name.startswith("x-amz-checksum-")]
    assert "x-amz-trailer" not in headers


def test_parts_sent_to_aws_keep_their_crc32(monkeypatch) -> None:
    headers = _uploaded_part_headers(monkeypatch, None)
    # over https boto3 sends it as a trailer of the aws-chunked body
    assert "x-amz-checksum-crc32" in headers or "crc32" in headers.get("x-amz-trailer", "")
