"""A1111 attention syntax parsing and long prompt chunking."""

from __future__ import annotations

import pytest
import torch

from easel_inference.builder import build_pipeline
from easel_inference.prompts import encode_prompt_pair, parse_attention


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a cat", [("a cat", 1.0)]),
        ("a (cat)", [("a ", 1.0), ("cat", 1.1)]),
        ("a [cat]", [("a ", 1.0), ("cat", 1 / 1.1)]),
        ("a (cat:1.5) dog", [("a ", 1.0), ("cat", 1.5), (" dog", 1.0)]),
        ("((cat))", [("cat", 1.1 * 1.1)]),
        (r"a \(cat\)", [("a (cat)", 1.0)]),
        ("(unclosed", [("unclosed", 1.1)]),
        ("time: noon", [("time: noon", 1.0)]),
        ("a BREAK b", [("a ", 1.0), ("BREAK", -1.0), (" b", 1.0)]),
    ],
)
def test_parse_attention(text, expected) -> None:
    parsed = parse_attention(text)
    assert [t for t, _ in parsed] == [t for t, _ in expected]
    assert [w for _, w in parsed] == pytest.approx([w for _, w in expected])


@pytest.fixture(scope="module")
def pipes():
    return {"sd15": build_pipeline(arch="sd15"), "sdxl": build_pipeline(arch="sdxl")}


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_plain_prompt_matches_the_pipeline_encoder(pipes, arch) -> None:
    pipe = pipes[arch]
    ours = encode_prompt_pair(pipe, "a red boat", "blurry", clip_skip=None, device="cpu")
    theirs = pipe.encode_prompt(
        prompt="a red boat", device="cpu", num_images_per_prompt=1,
        do_classifier_free_guidance=True, negative_prompt="blurry",
    )
    torch.testing.assert_close(ours["prompt_embeds"], theirs[0])
    torch.testing.assert_close(ours["negative_prompt_embeds"], theirs[1])
    if arch == "sdxl":
        torch.testing.assert_close(ours["pooled_prompt_embeds"], theirs[2])


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_long_prompt_gets_more_chunks_and_negative_matches(pipes, arch) -> None:
    long_prompt = ", ".join(["a very detailed painting of a harbour"] * 20)
    embeds = encode_prompt_pair(pipes[arch], long_prompt, "", clip_skip=None, device="cpu")
    assert embeds["prompt_embeds"].shape[1] > 77
    assert embeds["prompt_embeds"].shape[1] % 77 == 0
    assert embeds["negative_prompt_embeds"].shape == embeds["prompt_embeds"].shape


def test_weight_changes_only_the_weighted_chunk_tokens(pipes) -> None:
    pipe = pipes["sd15"]
    plain = encode_prompt_pair(pipe, "a red boat", "", clip_skip=None, device="cpu")
    weighted = encode_prompt_pair(pipe, "a (red:1.5) boat", "", clip_skip=None, device="cpu")
    assert not torch.equal(plain["prompt_embeds"], weighted["prompt_embeds"])
    assert torch.equal(plain["negative_prompt_embeds"], weighted["negative_prompt_embeds"])


def test_clip_skip_uses_an_earlier_layer(pipes) -> None:
    pipe = pipes["sd15"]
    last = encode_prompt_pair(pipe, "a red boat", "", clip_skip=1, device="cpu")
    skipped = encode_prompt_pair(pipe, "a red boat", "", clip_skip=2, device="cpu")
    assert not torch.equal(last["prompt_embeds"], skipped["prompt_embeds"])
