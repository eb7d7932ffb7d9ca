"""Model checks read only safetensors headers; `.ckpt` goes through a weights-only load."""

from __future__ import annotations

import pytest
from script_support import lora_keys, sd1_keys, write_safetensors

from scripts.model_files import (
    CHECKPOINT,
    LORA,
    SD1,
    SD2,
    SDXL,
    ModelFileError,
    convert_pickle_to_safetensors,
    inspect_safetensors,
    read_safetensors_header,
)


def test_sd1_checkpoint_is_recognised_from_key_names(tmp_path):
    facts = inspect_safetensors(write_safetensors(tmp_path / "a.safetensors", sd1_keys()))
    assert (facts.kind, facts.family) == (CHECKPOINT, SD1)


def test_sd2_checkpoint_is_recognised_from_the_open_clip_text_encoder(tmp_path):
    keys = {"cond_stage_model.model.ln_final.weight": ([4], 0),
            "model.diffusion_model.out.2.weight": ([4], 0)}
    facts = inspect_safetensors(write_safetensors(tmp_path / "b.safetensors", keys))
    assert facts.family == SD2


def test_sdxl_checkpoint_is_recognised_from_its_two_text_encoders(tmp_path):
    keys = {"conditioner.embedders.1.model.ln_final.weight": ([4], 0),
            "model.diffusion_model.label_emb.0.0.weight": ([4, 4], 0)}
    facts = inspect_safetensors(write_safetensors(tmp_path / "c.safetensors", keys))
    assert facts.family == SDXL


@pytest.mark.parametrize(("width", "family"), [(768, SD1), (1024, SD2), (2048, SDXL)])
def test_unet_only_checkpoint_family_comes_from_cross_attention_width(tmp_path, width, family):
    keys = {"model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight":
            ([8, width], 0)}
    facts = inspect_safetensors(write_safetensors(tmp_path / "d.safetensors", keys))
    assert facts.family == family


def test_unknown_checkpoint_has_no_family(tmp_path):
    keys = {"model.diffusion_model.something.weight": ([4], 0)}
    assert inspect_safetensors(write_safetensors(tmp_path / "e.safetensors", keys)).family is None


def test_lora_is_recognised(tmp_path):
    facts = inspect_safetensors(write_safetensors(tmp_path / "l.safetensors", lora_keys()))
    assert facts.kind == LORA


def test_truncated_file_is_refused(tmp_path):
    path = write_safetensors(tmp_path / "t.safetensors", sd1_keys())
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ModelFileError, match="outside the file|off its header"):
        read_safetensors_header(path)


def test_file_that_is_not_safetensors_is_refused(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"<html>not found</html>" * 10)
    with pytest.raises(ModelFileError, match="not a safetensors file"):
        read_safetensors_header(path)


def test_header_that_is_not_json_is_refused(tmp_path):
    path = tmp_path / "y.safetensors"
    path.write_bytes((16).to_bytes(8, "little") + b"{not json at all" + b"\0" * 4)
    with pytest.raises(ModelFileError, match="not valid JSON"):
        read_safetensors_header(path)


def test_ckpt_is_converted_through_a_weights_only_load(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    weight = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    state = {"cond_stage_model.transformer.text_model.x.weight": weight,
             "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight":
                 torch.zeros(8, 768),
             "tied": weight}  # shares memory with the first tensor
    torch.save({"state_dict": state, "global_step": 5}, tmp_path / "m.ckpt")
    target = convert_pickle_to_safetensors(tmp_path / "m.ckpt", tmp_path / "out.safetensors")
    loaded = load_file(str(target))
    assert torch.equal(loaded["tied"], weight)
    assert "global_step" not in loaded
    assert inspect_safetensors(target).family == SD1


class Callback:  # a class a weights-only load must refuse to rebuild
    pass


def test_ckpt_that_needs_pickled_classes_is_refused_with_the_reason(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"state_dict": {"a": torch.zeros(2)}, "callback": Callback()}, tmp_path / "p.ckpt")
    with pytest.raises(ModelFileError, match=r"refused: it needs the pickled Python class "
                                             r".*Callback"):
        convert_pickle_to_safetensors(tmp_path / "p.ckpt", tmp_path / "p.safetensors")
    assert not (tmp_path / "p.safetensors").exists()


def test_ckpt_that_is_not_a_checkpoint_is_refused(tmp_path):
    pytest.importorskip("torch")
    (tmp_path / "g.ckpt").write_bytes(b"garbage" * 100)
    with pytest.raises(ModelFileError, match="not a readable PyTorch checkpoint"):
        convert_pickle_to_safetensors(tmp_path / "g.ckpt", tmp_path / "g.safetensors")


def test_sentencepiece_pieces_are_counted_from_the_model_proto(tmp_path):
    from scripts.model_files import sentencepiece_pieces

    path = tmp_path / "spiece.model"
    # two pieces (field 1) and a trainer_spec (field 2) that must not count
    path.write_bytes(b"\x0a\x03\x0a\x01a" + b"\x0a\x03\x0a\x01b" + b"\x12\x02\x08\x01")
    assert sentencepiece_pieces(path) == 2


def test_damaged_sentencepiece_model_is_refused(tmp_path):
    from scripts.model_files import sentencepiece_pieces

    path = tmp_path / "spiece.model"
    path.write_bytes(b"\x0a\x7f\x0a")
    with pytest.raises(ModelFileError, match="not a SentencePiece model"):
        sentencepiece_pieces(path)
