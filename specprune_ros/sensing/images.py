"""sensor_msgs/Image and CompressedImage -> HxWx3 uint8 RGB, without cv_bridge.

cv_bridge is not installable everywhere (the PyPI port breaks with numpy 2); these encodings
cover robot cameras: rgb8, bgr8, rgba8, bgra8, mono8, mono16 / 16UC1 (scaled to 8 bit), and
compressed JPEG / PNG. Every malformed message raises ImageError with the reason.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..observation import ObservationError

CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8uc1": 1, "8uc3": 3,
            "mono16": 1, "16uc1": 1}


class ImageError(ObservationError):
    """A camera message that cannot become an image."""


def image_to_rgb(msg: Any) -> np.ndarray:
    """A raw sensor_msgs/Image (fields height, width, encoding, step, data, is_bigendian)."""
    encoding = str(msg.encoding).lower()
    if encoding not in CHANNELS:
        raise ImageError(f"unsupported image encoding {msg.encoding!r} (supported: {', '.join(CHANNELS)})")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageError(f"empty image ({width}x{height})")
    channels = CHANNELS[encoding]
    depth = 2 if "16" in encoding else 1
    row = width * channels * depth
    if step < row:
        raise ImageError(f"step {step} is smaller than a {width}-pixel {encoding} row ({row} bytes)")
    data = np.frombuffer(bytes(msg.data) if not isinstance(msg.data, (bytes, bytearray, np.ndarray))
                         else msg.data, dtype=np.uint8)
    if data.size != step * height:
        raise ImageError(f"{data.size} data bytes for a {width}x{height} {encoding} image with step {step} "
                         f"(expected {step * height}): truncated or wrong size")
    rows = data.reshape(height, step)[:, :row]
    if depth == 2:
        dtype = ">u2" if getattr(msg, "is_bigendian", False) else "<u2"
        img = (np.ascontiguousarray(rows).view(dtype).reshape(height, width) >> 8).astype(np.uint8)
        return np.repeat(img[..., None], 3, axis=2)
    img = rows.reshape(height, width, channels)
    if channels == 1:
        return np.repeat(img, 3, axis=2)
    if encoding.startswith("bgr"):
        img = img[..., 2::-1]
    return np.ascontiguousarray(img[..., :3])


def compressed_to_rgb(msg: Any) -> np.ndarray:
    """A sensor_msgs/CompressedImage (JPEG or PNG)."""
    import cv2

    data = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if data.size == 0:
        raise ImageError("empty compressed image")
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if img is None:
        raise ImageError(f"cannot decode the compressed image (format {msg.format!r}, {data.size} bytes)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def to_rgb(msg: Any) -> np.ndarray:
    """Either message type, told apart by its fields."""
    return compressed_to_rgb(msg) if hasattr(msg, "format") and not hasattr(msg, "encoding") else image_to_rgb(msg)
