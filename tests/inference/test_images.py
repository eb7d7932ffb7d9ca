"""PNG encoding of responses: lossless, and written with zlib's fastest level."""

from __future__ import annotations

import base64
import io
import struct

import numpy as np
from PIL import Image

from easel_inference.images import encode_png


def _picture() -> Image.Image:
    rng = np.random.default_rng(7)
    return Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))


def _first_idat(png: bytes) -> bytes:
    offset = 8  # PNG signature
    while offset < len(png):
        length, kind = struct.unpack(">I4s", png[offset:offset + 8])
        if kind == b"IDAT":
            return png[offset + 8:offset + 8 + length]
        offset += 12 + length
    raise AssertionError("no IDAT chunk")


def test_encoded_png_decodes_to_the_same_pixels() -> None:
    image = _picture()
    decoded = Image.open(io.BytesIO(base64.b64decode(encode_png(image))))
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(image))


def test_png_is_compressed_at_zlibs_fastest_level() -> None:
    # zlib header (RFC 1950, section 2.2): FLEVEL, the top two bits of the FLG byte, is 0 for
    # "fastest" (levels 0-1) and 2 for the default level 6
    idat = _first_idat(base64.b64decode(encode_png(_picture())))
    assert idat[1] >> 6 == 0


def test_pngs_encoded_on_the_png_threads_are_byte_identical_to_the_synchronous_ones() -> None:
    from easel_inference.images import encode_png_later

    rng = np.random.default_rng(11)
    pictures = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
                for _ in range(6)]
    later = [encode_png_later(p, parameters=f"seed {i}") for i, p in enumerate(pictures)]
    assert [f.result() for f in later] == [encode_png(p, parameters=f"seed {i}")
                                           for i, p in enumerate(pictures)]


def test_a_generated_batch_keeps_its_order_and_bytes(client) -> None:
    """The response's PNGs, encoded on the PNG threads, are what the synchronous encoder writes
    for the same pixels and infotext, in the batch's order."""
    import json

    from inference_support import invoke, small

    from easel_contracts.infotext import PNG_TEXT_KEY

    body = invoke(client, "txt2img", small(batch_size=3, n_iter=2)).json()
    infotexts = json.loads(body["info"])["infotexts"]
    assert len(body["images"]) == 6
    for b64, infotext in zip(body["images"], infotexts, strict=True):
        image = Image.open(io.BytesIO(base64.b64decode(b64)))
        assert image.info[PNG_TEXT_KEY] == infotext
        assert encode_png(image.convert("RGB"), parameters=infotext) == b64
