"""The reference's image operations, in numpy: what an OpenVLA-OFT model saw in training.

The reference deploy code (OpenVLA-OFT's; docs/model.md, "Image preprocessing, held to the
reference") prepares every camera frame with TensorFlow: frames that are not 224 x 224 go
through a JPEG round trip (quality 95) and an antialiased lanczos3 resize with rounding (the
RLDS dataset builder's scheme); models trained with image augmentation then see a 90 %-area center crop made by
``tf.image.crop_and_resize`` and converted back to uint8 by truncation. These functions redo
each step with the same arithmetic (float32, the same operation order, the same sampling
geometry) so the pixels match without TensorFlow at run time; the fixtures in
``test/model/fixtures`` (made by TensorFlow itself) hold them to it.

Everything runs on the host: float32 numpy arithmetic is the same on every machine, while a GPU
kernel may fuse multiply-adds and round differently. The result is a small uint8 image.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

JPEG_QUALITY = 95            # tf.io.encode_jpeg's default
LANCZOS_RADIUS = 3.0
CROP_AREA = 0.9              # the reference's crop_scale
_PI = np.float32(3.14159265359)   # the constant TensorFlow's lanczos kernel uses
_F = np.float32


class _Workspace(threading.local):
    """Per-thread scratch arrays, reused between frames.

    Every intermediate here is 0.15-4 MB: allocated afresh, glibc hands each one out by mmap
    (or trims the heap after it), and the page faults alone doubled the time of a frame
    (measured: lanczos 1.4 -> 3.1 ms, crop 0.9 -> 2.7 ms). Cameras run in parallel threads,
    hence one workspace per thread.
    """

    def __init__(self) -> None:
        self.arrays: dict[tuple[str, tuple[int, ...], str], np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype=_F) -> np.ndarray:
        key = (name, tuple(shape), np.dtype(dtype).str)
        array = self.arrays.get(key)
        if array is None:
            if len(self.arrays) > 64:          # frame sizes changed many times: start over
                self.arrays.clear()
            array = self.arrays[key] = np.empty(shape, dtype=dtype)
        return array


_scratch = _Workspace()


# ---- JPEG round trip ----------------------------------------------------------------------------

def jpeg_round_trip(image: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    """A JPEG round trip (see ``_jpeg_round_trip``), in an array the caller owns."""
    return _jpeg_round_trip(image, quality).copy()


def _jpeg_round_trip(image: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    """Encode as JPEG and decode again, as ``tf.io.encode_jpeg`` + ``tf.io.decode_image`` do.

    Both sides use libjpeg(-turbo) with TensorFlow's settings. Encoding: quality 95, 4:2:0
    chroma, accurate DCT: OpenCV's encoder writes the same entropy-coded bytes as TensorFlow
    (only the JFIF density field of the header differs). Decoding: TensorFlow's default is the
    fast integer IDCT ("INTEGER_FAST") with fancy upsampling, which OpenCV and Pillow cannot
    select; simplejpeg wraps libjpeg-turbo and exposes both switches. Measured against
    TensorFlow 2.21 on the fixtures: bit-identical decoded pixels.
    """
    import cv2
    import simplejpeg

    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR, dst=_scratch.get("bgr", image.shape, np.uint8))
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"JPEG encoding of a {image.shape[1]}x{image.shape[0]} image failed")
    return simplejpeg.decode_jpeg(data.tobytes(), colorspace="RGB", fastdct=True, fastupsample=False,
                                  buffer=_scratch.get("decoded", image.shape, np.uint8))


# ---- lanczos3 resize (tf.image.resize(method="lanczos3", antialias=True)) ---------------------------

@dataclass(frozen=True)
class Spans:
    """For each output pixel: the first input index and the weights of ``size`` consecutive inputs."""

    starts: np.ndarray     # (out,) int
    weights: np.ndarray    # (out, size) float32, zero past the clamped end of a span


def _lanczos(x: np.ndarray) -> np.ndarray:
    """TensorFlow's LanczosKernelFunc(3) in float32 (1 at |x| <= 1e-3, 0 beyond the radius)."""
    x = np.abs(x).astype(_F)
    radius = _F(LANCZOS_RADIUS)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = radius * np.sin(_PI * x) * np.sin(_PI * x / radius) / (_PI * _PI * x * x)
    return np.where(x > radius, _F(0), np.where(x <= _F(1e-3), _F(1), value)).astype(_F)


@lru_cache(maxsize=32)
def lanczos_spans(in_size: int, out_size: int) -> Spans:
    """TensorFlow's ComputeSpans for scale_and_translate (no translation, antialiased)."""
    scale = _F(out_size) / _F(in_size)
    inv_scale = _F(1.0 / float(scale))
    kernel_scale = max(inv_scale, _F(1.0))                      # antialias: widen when shrinking
    radius = _F(LANCZOS_RADIUS) * kernel_scale
    span = min(2 * int(np.ceil(radius)) + 1, in_size)
    one_over_kernel_scale = _F(1.0) / kernel_scale
    starts = np.zeros(out_size, dtype=np.int64)
    weights = np.zeros((out_size, span), dtype=_F)
    for x in range(out_size):
        sample = (_F(x) + _F(0.5)) * inv_scale
        if sample < 0 or sample > in_size:
            continue
        start = int(np.ceil(sample - radius - _F(0.5)))
        end = int(np.floor(sample + radius - _F(0.5)))
        start, end = min(max(start, 0), in_size - 1), min(max(end, 0), in_size - 1) + 1
        positions = (np.arange(start, end).astype(_F) + _F(0.5) - sample) * one_over_kernel_scale
        w = _lanczos(positions)
        total = _F(0)
        for value in w:                      # sequential float32 sum, as TensorFlow accumulates
            total = _F(total + value)
        if abs(total) >= 1000.0 * np.finfo(np.float32).tiny:
            weights[x, :end - start] = w * (_F(1.0) / total)
        starts[x] = start
    return Spans(starts, weights)


@dataclass(frozen=True)
class BandBlock:
    """Output pixels [out_lo, out_hi) read only the inputs [in_lo, in_hi): one small dense matrix."""

    out_lo: int
    out_hi: int
    in_lo: int
    in_hi: int
    weights: np.ndarray    # (out_hi - out_lo, in_hi - in_lo) float32


BAND_BLOCK = 16            # output pixels per block: measured fastest (less work on zeros than 32+)


@lru_cache(maxsize=32)
def band_blocks(in_size: int, out_size: int) -> tuple[BandBlock, ...]:
    """The resize as a banded matrix, cut into blocks so no time is spent on the zeros."""
    spans = lanczos_spans(in_size, out_size)
    width = spans.weights.shape[1]
    blocks = []
    for lo in range(0, out_size, BAND_BLOCK):
        hi = min(lo + BAND_BLOCK, out_size)
        starts = spans.starts[lo:hi]
        in_lo, in_hi = int(starts.min()), int(min(starts.max() + width, in_size))
        m = np.zeros((hi - lo, in_hi - in_lo), dtype=_F)
        for row, start in enumerate(starts):
            n = min(width, in_size - start)
            m[row, start - in_lo:start - in_lo + n] = spans.weights[lo + row, :n]
        blocks.append(BandBlock(lo, hi, in_lo, in_hi, m))
    return tuple(blocks)


def lanczos3_resize(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C) uint8 -> (size, size, C) float32 before rounding, in an array the caller owns."""
    return _lanczos3_resize(image, size).copy()


def _lanczos3_resize(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C) uint8 -> (size, size, C) float32, before rounding (columns first, then rows).

    Returns a view of this thread's scratch space, valid until its next call.

    TensorFlow's weights and order of passes; the sums run as small matrix products, so their
    float32 rounding differs from TensorFlow's tap-by-tap sums in the last bits (measured: a
    rounded pixel flips by one grey level for < 0.2 % of the values, never more).
    """
    height, width, channels = image.shape
    planes = _scratch.get("planes", (channels, height, width))
    np.copyto(planes, image.transpose(2, 0, 1))                                     # uint8 -> float32
    planes = planes.reshape(channels * height, width)                               # rows of each channel
    mid = _scratch.get("mid", (channels * height, size))
    for b in band_blocks(width, size):
        np.matmul(planes[:, b.in_lo:b.in_hi], b.weights.T, out=mid[:, b.out_lo:b.out_hi])
    mid = mid.reshape(channels, height, size)
    out = _scratch.get("resized", (channels, size, size))
    for b in band_blocks(height, size):
        np.matmul(b.weights, mid[:, b.in_lo:b.in_hi], out=out[:, b.out_lo:b.out_hi])
    return out.transpose(1, 2, 0)


def round_to_uint8(x: np.ndarray) -> np.ndarray:
    """``tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)``: round half to even, like tf.round."""
    rounded = np.rint(x, out=_scratch.get("rounded", x.shape))
    return np.clip(rounded, 0, 255, out=rounded).astype(np.uint8)


def reference_resize(image: np.ndarray, size: int = 224) -> np.ndarray:
    """The reference's resize of a frame that is not ``size`` x ``size`` (JPEG, lanczos3, round)."""
    if image.shape[:2] == (size, size):
        return image
    return round_to_uint8(_lanczos3_resize(_jpeg_round_trip(image), size))


# ---- center crop (tf.image.crop_and_resize of a 90 % area box, bilinear) --------------------------

@dataclass(frozen=True)
class _Axis:
    low: np.ndarray    # (out,) int: floor of the sample position
    high: np.ndarray   # (out,) int: ceil of the sample position
    lerp: np.ndarray   # (out,) float32: position - floor

    def low_flat(self, channels: int) -> np.ndarray:
        """Indices of the floor pixels' values in a row of interleaved channels."""
        return (self.low[:, None] * channels + np.arange(channels)).reshape(-1)

    def high_flat(self, channels: int) -> np.ndarray:
        return (self.high[:, None] * channels + np.arange(channels)).reshape(-1)

    def lerp_flat(self, channels: int) -> np.ndarray:
        return np.repeat(self.lerp, channels)


@lru_cache(maxsize=16)
def _crop_axis(in_size: int, out_size: int, area: float = CROP_AREA) -> _Axis:
    """Sample positions of crop_and_resize along one axis, for the reference's centred box."""
    side = np.clip(np.sqrt(_F(area)), _F(0), _F(1))         # tf.sqrt of a float32 constant
    y1 = (_F(1) - side) / _F(2)
    y2 = y1 + side
    step = (y2 - y1) * _F(in_size - 1) / _F(out_size - 1)
    pos = y1 * _F(in_size - 1) + np.arange(out_size).astype(_F) * step
    if pos.min() < 0 or pos.max() > in_size - 1:     # the centred box never leaves the image
        raise ValueError(f"crop box samples outside a {in_size}-pixel axis")
    low = np.floor(pos).astype(np.int64)
    return _Axis(low, np.ceil(pos).astype(np.int64), (pos - low.astype(_F)).astype(_F))


def center_crop(image: np.ndarray, size: int = 224, area: float = CROP_AREA) -> np.ndarray:
    """The reference's center crop: (H, W, 3) uint8 -> (size, size, 3) uint8.

    ``convert_image_dtype`` to float (x * (1/255)), bilinear ``crop_and_resize`` with the box
    [o, o, o + s, o + s] (s = sqrt(area), o = (1 - s) / 2), clip to [0, 1], and back with
    ``convert_image_dtype(saturate=True)``: x * 255.5, truncated. TensorFlow interpolates each
    output pixel's top and bottom rows along x, then between them along y; doing the x pass
    once for every input row needed performs the same float32 operations, once instead of twice.
    """
    height, width, channels = image.shape
    rows, cols = _crop_axis(height, size, area), _crop_axis(width, size, area)
    # Rows of interleaved pixels, x * (1/255) in float32 (the uint8 -> float32 cast is exact).
    x = np.multiply(image.reshape(height, width * channels), _F(1.0 / 255),
                    out=_scratch.get("unit", (height, width * channels)))
    left = np.take(x, cols.low_flat(channels), axis=1, out=_scratch.get("left", (height, size * channels)))
    right = np.take(x, cols.high_flat(channels), axis=1, out=_scratch.get("right", (height, size * channels)))
    across = np.add(left, np.multiply(np.subtract(right, left, out=right), cols.lerp_flat(channels), out=right),
                    out=left)                                          # top_left + (top_right - top_left) * x_lerp
    top = np.take(across, rows.low, axis=0, out=_scratch.get("top", (size, size * channels)))
    bottom = np.take(across, rows.high, axis=0, out=_scratch.get("bottom", (size, size * channels)))
    crop = np.add(top, np.multiply(np.subtract(bottom, top, out=bottom), rows.lerp[:, None], out=bottom),
                  out=top)                                             # top + (bottom - top) * y_lerp
    return crop_to_uint8(crop).reshape(size, size, channels)


def crop_to_uint8(crop: np.ndarray) -> np.ndarray:
    """clip to [0, 1], then ``convert_image_dtype(uint8, saturate=True)``: x * 255.5, clipped, truncated.

    Works in place on ``crop``.
    """
    np.clip(crop, _F(0), _F(1), out=crop)
    np.multiply(crop, _F(255.5), out=crop)
    return np.clip(crop, _F(0), _F(255), out=crop).astype(np.uint8)      # a float -> uint8 cast truncates
