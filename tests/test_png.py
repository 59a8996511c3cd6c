"""Describe the tile store's PNG encoder: standard files that decode to exactly the pixels."""

from __future__ import annotations

import io
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from lncr.tiling.png import encode_png, up_filtered
from lncr.tiling.store import decode, encode


def tissue_like(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth, stained-looking RGB image with noise (what tiles are)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([180 + 40 * np.sin(xx / 7 + c) * np.cos(yy / 11) for c in range(3)], -1)
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


class DescribeEncodePng:
    @pytest.mark.parametrize("level", range(10))
    def it_decodes_with_libpng_and_pillow_to_the_same_pixels(self, level):
        tile = tissue_like(64, 48, level)
        data = encode_png(tile, level)
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        by_opencv = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)[..., ::-1]
        by_pillow = np.asarray(Image.open(io.BytesIO(data)))
        assert np.array_equal(by_opencv, tile) and np.array_equal(by_pillow, tile)

    @pytest.mark.parametrize("shape", [(1, 1, 3), (3, 5, 3), (5, 1, 3), (17, 9)])
    def it_handles_odd_shapes_and_grey_images(self, shape):
        image = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
        with Image.open(io.BytesIO(encode_png(image))) as decoded:
            assert decoded.mode == ("RGB" if len(shape) == 3 else "L")
            assert np.array_equal(np.asarray(decoded), image)

    def it_writes_chunks_whose_checksums_verify(self):
        data = encode_png(tissue_like(8, 8))
        pos, kinds = 8, []
        while pos < len(data):
            n = int.from_bytes(data[pos:pos + 4], "big")
            kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
            assert int.from_bytes(data[pos + 8 + n:pos + 12 + n], "big") == zlib.crc32(kind + body)
            kinds.append(kind)
            pos += 12 + n
        assert kinds == [b"IHDR", b"IDAT", b"IEND"]

    def it_filters_each_row_by_the_row_above_modulo_256(self):
        image = np.array([[[10, 200, 3]], [[5, 250, 3]]], np.uint8)
        rows = up_filtered(image)
        assert rows.tolist() == [[2, 10, 200, 3], [2, 251, 50, 0]]

    def it_is_as_small_as_libpng_on_tissue(self):
        tile = tissue_like(256, 256)
        ours = len(encode_png(tile, 1))
        libpng = len(cv2.imencode(".png", tile, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1])
        assert ours < 1.1 * libpng

    def it_refuses_what_is_not_an_rgb_or_grey_byte_image(self):
        with pytest.raises(ValueError, match="uint8"):
            encode_png(np.zeros((4, 4, 3), np.float32))
        with pytest.raises(ValueError, match="RGB or grey"):
            encode_png(np.zeros((4, 4, 4), np.uint8))

    def it_is_the_store_encoding(self):
        tile = tissue_like(32, 32)
        assert encode(tile, "png") == encode_png(tile, 1)
        assert np.array_equal(decode(encode(tile, "png", png_compression=6)), tile)
