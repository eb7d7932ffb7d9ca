"""T5's SentencePiece model (``spiece.model``) as a fast tokenizer, without the sentencepiece
package: the file is a protobuf ``ModelProto`` whose pieces (text, score, type) and normalizer
charsmap are read here with a minimal protobuf walk and handed to the ``tokenizers`` Unigram model,
as transformers' own T5 converter does with the protobuf library.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

# SentencePiece.Type
NORMAL, UNKNOWN, CONTROL = 1, 2, 3


class SpieceError(ValueError):
    """Not a usable SentencePiece model; says why."""


@dataclass(frozen=True)
class Spiece:
    pieces: tuple[tuple[str, float, int], ...]
    charsmap: bytes = b""


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if position >= len(data) or shift > 63:
            raise SpieceError("truncated varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, position


def _fields(data: bytes) -> list[tuple[int, int, object]]:
    """(field number, wire type, value) of one protobuf message, in order."""
    out: list[tuple[int, int, object]] = []
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, position = _varint(data, position)
        elif wire == 1:
            value, position = data[position:position + 8], position + 8
        elif wire == 5:
            value, position = data[position:position + 4], position + 4
        elif wire == 2:
            length, position = _varint(data, position)
            value, position = data[position:position + length], position + length
        else:
            raise SpieceError(f"unsupported protobuf wire type {wire}")
        if position > len(data):
            raise SpieceError("truncated field")
        out.append((field, wire, value))
    return out


def read_spiece(path: Path) -> Spiece:
    try:
        pieces = []
        charsmap = b""
        for field, wire, value in _fields(path.read_bytes()):
            if field == 1 and wire == 2:
                text, score, kind = "", 0.0, NORMAL
                for sub, sub_wire, sub_value in _fields(value):  # type: ignore[arg-type]
                    if sub == 1 and sub_wire == 2:
                        text = bytes(sub_value).decode("utf-8")  # type: ignore[arg-type]
                    elif sub == 2 and sub_wire == 5:
                        score = struct.unpack("<f", sub_value)[0]  # type: ignore[arg-type]
                    elif sub == 3 and sub_wire == 0:
                        kind = int(sub_value)  # type: ignore[arg-type]
                pieces.append((text, float(score), kind))
            elif field == 3 and wire == 2:
                for sub, sub_wire, sub_value in _fields(value):  # type: ignore[arg-type]
                    if sub == 2 and sub_wire == 2:
                        charsmap = bytes(sub_value)  # type: ignore[arg-type]
    except (SpieceError, UnicodeDecodeError, struct.error) as exc:
        raise SpieceError(f"{path.name}: not a SentencePiece model ({exc})") from None
    if not pieces:
        raise SpieceError(f"{path.name}: not a SentencePiece model (no pieces)")
    return Spiece(tuple(pieces), charsmap)


def _key(field: int, wire: int) -> bytes:
    return _varint_bytes(field << 3 | wire)


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint_bytes(len(payload)) + payload


def spiece_bytes(model: Spiece) -> bytes:
    """``model`` as a ``ModelProto`` file (pieces and the normalizer charsmap)."""
    out = bytearray()
    for text, score, kind in model.pieces:
        piece = (_length_delimited(1, text.encode("utf-8")) + _key(2, 5)
                 + struct.pack("<f", score) + _key(3, 0) + _varint_bytes(kind))
        out += _length_delimited(1, piece)
    if model.charsmap:
        out += _length_delimited(3, _length_delimited(2, model.charsmap))
    return bytes(out)


def t5_tokenizer(path: Path):  # -> T5TokenizerFast
    """T5's tokenizer from its ``spiece.model`` (pieces in file order are the token ids)."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from transformers import T5TokenizerFast

    model = read_spiece(path)
    vocab = [(text, score) for text, score, _ in model.pieces]
    unknown = [index for index, (_, _, kind) in enumerate(model.pieces) if kind == UNKNOWN]
    names = {text: index for index, (text, _, _) in enumerate(model.pieces)}
    for needed in ("</s>", "<pad>"):
        if needed not in names:
            raise SpieceError(f"{path.name}: has no {needed} piece; not a T5 tokenizer")
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=unknown[0] if unknown else None))
    steps = [normalizers.Strip(left=False, right=True), normalizers.Replace(Regex(" {2,}"), "▁")]
    if model.charsmap:
        steps.insert(0, normalizers.Precompiled(model.charsmap))
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", names["</s>"])])
    unk = model.pieces[unknown[0]][0] if unknown else "<unk>"
    return T5TokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", pad_token="<pad>",
                           unk_token=unk, extra_ids=0)
