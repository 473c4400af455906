"""Rendering an UltraMNIST canvas: scaled MNIST digits, white on black."""

from __future__ import annotations

import numpy as np

from .layout import Canvas
from .mnist import MnistPools


def resize_digit(digit: np.ndarray, side: int) -> np.ndarray:
    """Scale a 28 x 28 uint8 digit to ``side`` x ``side`` (area when shrinking, else bilinear).

    Args:
        digit: (28, 28) uint8.
        side: target side in pixels.

    Returns:
        (side, side) uint8.
    """
    from PIL import Image

    if side == digit.shape[0]:
        return np.array(digit, np.uint8)
    resample = Image.Resampling.BOX if side < digit.shape[0] else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(np.asarray(digit, np.uint8)).resize((side, side), resample))


def render_canvas(canvas: Canvas, side: int, pools: MnistPools) -> np.ndarray:
    """The canvas as (side, side) uint8: black background, white digits in their boxes."""
    img = np.zeros((side, side), np.uint8)
    images = pools.images[canvas.mnist_set]
    for (x, y, s), i in zip(canvas.boxes, canvas.mnist_index, strict=True):
        img[y : y + s, x : x + s] = resize_digit(images[i], s)
    return img
