"""A tiny raster canvas (numpy RGB) and a PNG encoder (zlib + struct), so charts need no plotting
library: rectangles, lines, and text in the 5x7 bitmap font.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from bench.font import HEIGHT, WIDTH, glyph

Color = tuple[int, int, int]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def encode_png(pixels: np.ndarray) -> bytes:
    """8-bit RGB PNG from an (h, w, 3) uint8 array: one IDAT, filter type 0 on every row."""
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError("expected an (height, width, 3) array")
    h, w, _ = pixels.shape
    rows = np.concatenate([np.zeros((h, 1), dtype=np.uint8), pixels.astype(np.uint8).reshape(h, w * 3)], axis=1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8 bits, truecolour, deflate, no interlace
    idat = zlib.compress(rows.tobytes(), 9)
    return PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class Canvas:
    def __init__(self, width: int, height: int, background: Color = (255, 255, 255)) -> None:
        self.width = width
        self.height = height
        self.pixels = np.empty((height, width, 3), dtype=np.uint8)
        self.pixels[:, :] = background

    def rect(self, x0: float, y0: float, x1: float, y1: float, color: Color) -> None:
        """Filled rectangle; coordinates in any order, clipped to the canvas."""
        xa, xb = sorted((int(round(x0)), int(round(x1))))
        ya, yb = sorted((int(round(y0)), int(round(y1))))
        xa, ya = max(0, xa), max(0, ya)
        xb, yb = min(self.width, max(xb, xa + 1)), min(self.height, max(yb, ya + 1))
        if xa < xb and ya < yb:
            self.pixels[ya:yb, xa:xb] = color

    def line(self, x0: float, y0: float, x1: float, y1: float, color: Color, width: int = 1,
             dash: int = 0) -> None:
        """A line drawn as square dots along its length (dash > 0: on/off every `dash` px)."""
        steps = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        half = width / 2
        for i in range(steps):
            if dash and (i // dash) % 2:
                continue
            f = i / max(1, steps - 1)
            x, y = x0 + (x1 - x0) * f, y0 + (y1 - y0) * f
            self.rect(x - half, y - half, x + half, y + half, color)

    def text(self, x: float, y: float, text: str, color: Color = (0, 0, 0), scale: int = 1,
             align: str = "left") -> None:
        """`y` is the top of the text; align left, right or center around `x`."""
        w = self.text_width(text, scale)
        x = x - w if align == "right" else x - w / 2 if align == "center" else x
        x, y = int(round(x)), int(round(y))  # whole pixels, or glyph dots come out 1 or 2 px wide
        for i, ch in enumerate(text):
            gx = x + i * (WIDTH + 1) * scale
            for row, bits in enumerate(glyph(ch)):
                for col in range(WIDTH):
                    if bits & (1 << (WIDTH - 1 - col)):
                        px, py = gx + col * scale, y + row * scale
                        self.rect(px, py, px + scale, py + scale, color)

    @staticmethod
    def text_width(text: str, scale: int = 1) -> int:
        return max(0, len(text) * (WIDTH + 1) - 1) * scale

    @staticmethod
    def text_height(scale: int = 1) -> int:
        return HEIGHT * scale

    def to_png(self) -> bytes:
        return encode_png(self.pixels)
