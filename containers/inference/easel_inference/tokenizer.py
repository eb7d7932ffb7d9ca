"""CLIP tokenizer built offline from the BPE merges file shipped by ``open_clip_torch``.

The file is located through the import system without importing ``open_clip`` (which would pull
in heavy optional modules); nothing is fetched from a model hub.
"""

from __future__ import annotations

import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer

BPE_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
MAX_LENGTH = 77
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"


class TokenizerUnavailableError(RuntimeError):
    """The CLIP BPE vocabulary file could not be found."""


def bpe_vocab_path() -> Path:
    """Path of the CLIP BPE merges file inside the installed ``open_clip`` package."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerUnavailableError(
            "open_clip_torch is not installed; install it with `pip install --no-deps open_clip_torch`"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / BPE_FILE_NAME
        if candidate.is_file():
            return candidate
    raise TokenizerUnavailableError(f"{BPE_FILE_NAME} not found in the open_clip package")


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins for raw bytes, in the order CLIP's vocabulary uses."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


@lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[tuple[tuple[str, int], ...], tuple[str, ...]]:
    with gzip.open(bpe_vocab_path(), "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    merge_count = VOCAB_SIZE - 256 * 2 - 2
    merges = tuple(line for line in lines[1 : merge_count + 1])
    alphabet = _byte_alphabet()
    tokens = alphabet + [char + "</w>" for char in alphabet]
    tokens += ["".join(merge.split(" ")) for merge in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    if len(tokens) != VOCAB_SIZE:
        raise TokenizerUnavailableError(f"unexpected CLIP vocabulary size {len(tokens)}")
    return tuple((token, index) for index, token in enumerate(tokens)), merges


def build_clip_tokenizer(*, pad_token: str = EOS_TOKEN) -> CLIPTokenizer:
    """A CLIP tokenizer equal to the one SD checkpoints were trained with.

    SD1.x and the first SDXL encoder pad with ``<|endoftext|>``; SD2.x and the second SDXL encoder
    (OpenCLIP) pad with ``!``.
    """
    vocab, merges = _vocab_and_merges()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=[tuple(merge.split(" ")) for merge in merges],
        pad_token=pad_token,
        model_max_length=MAX_LENGTH,
    )
