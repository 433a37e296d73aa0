"""The reference's image operations, in numpy: what an OpenVLA-OFT model saw in training.

The reference deploy code (docs/openvla-oft.md, "Image preprocessing") prepares every camera
frame with TensorFlow: frames that are not 224 x 224 go through a JPEG round trip (quality 95)
and an antialiased lanczos3 resize with rounding (the RLDS dataset builder's scheme); models
trained with image augmentation then see a 90 %-area center crop made by
``tf.image.crop_and_resize`` and converted back to uint8 by truncation. These functions redo
each step with the same arithmetic (float32, the same operation order, the same sampling
geometry) so the pixels match without TensorFlow at run time; the fixtures in
``test/model/fixtures`` (made by TensorFlow itself) hold them to it.

Everything runs on the host: float32 numpy arithmetic is the same on every machine, while a GPU
kernel may fuse multiply-adds and round differently. The result is a small uint8 image.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

JPEG_QUALITY = 95            # tf.io.encode_jpeg's default
LANCZOS_RADIUS = 3.0
CROP_AREA = 0.9              # the reference's crop_scale
_PI = np.float32(3.14159265359)   # the constant TensorFlow's lanczos kernel uses
_F = np.float32


# ---- JPEG round trip ----------------------------------------------------------------------------

def jpeg_round_trip(image: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
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

    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"JPEG encoding of a {image.shape[1]}x{image.shape[0]} image failed")
    return simplejpeg.decode_jpeg(data.tobytes(), colorspace="RGB", fastdct=True, fastupsample=False)


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


def _gather(image: np.ndarray, spans: Spans, axis: int) -> np.ndarray:
    """Weighted sum over ``axis`` in float32, tap by tap in span order (TensorFlow's order)."""
    n_in = image.shape[axis]
    out = None
    for tap in range(spans.weights.shape[1]):
        index = np.minimum(spans.starts + tap, n_in - 1)
        w = spans.weights[:, tap]
        shape = [1] * image.ndim
        shape[axis] = w.size
        term = np.take(image, index, axis=axis) * w.reshape(shape)
        out = term if out is None else out + term
    return out


def lanczos3_resize(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C) uint8 -> (size, size, C) float32, before rounding (columns first, then rows)."""
    height, width = image.shape[:2]
    x = image.astype(_F)
    x = _gather(x, lanczos_spans(width, size), axis=1)
    return _gather(x, lanczos_spans(height, size), axis=0)


def round_to_uint8(x: np.ndarray) -> np.ndarray:
    """``tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)``: round half to even, like tf.round."""
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def reference_resize(image: np.ndarray, size: int = 224) -> np.ndarray:
    """The reference's resize of a frame that is not ``size`` x ``size`` (JPEG, lanczos3, round)."""
    if image.shape[:2] == (size, size):
        return image
    return round_to_uint8(lanczos3_resize(jpeg_round_trip(image), size))


# ---- center crop (tf.image.crop_and_resize of a 90 % area box, bilinear) --------------------------

@dataclass(frozen=True)
class _Axis:
    low: np.ndarray    # (out,) int: floor of the sample position
    high: np.ndarray   # (out,) int: ceil of the sample position
    lerp: np.ndarray   # (out, 1...) float32: position - floor


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
    ``convert_image_dtype(saturate=True)``: x * 255.5, truncated.
    """
    rows, cols = _crop_axis(image.shape[0], size, area), _crop_axis(image.shape[1], size, area)
    x = image.astype(_F) * _F(1.0 / 255)
    top, bottom = x[rows.low], x[rows.high]
    x_lerp = cols.lerp[None, :, None]
    top_left, top_right = top[:, cols.low], top[:, cols.high]
    bottom_left, bottom_right = bottom[:, cols.low], bottom[:, cols.high]
    upper = top_left + (top_right - top_left) * x_lerp
    lower = bottom_left + (bottom_right - bottom_left) * x_lerp
    crop = upper + (lower - upper) * rows.lerp[:, None, None]
    return crop_to_uint8(crop)


def crop_to_uint8(crop: np.ndarray) -> np.ndarray:
    scaled = np.clip(crop, _F(0), _F(1)) * _F(255.5)
    return np.clip(scaled, _F(0), _F(255)).astype(np.uint8)      # a float -> uint8 cast truncates
