from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from specprune_ros.sensing.images import ImageError, to_rgb


def raw(img, encoding, step=None, data=None, bigendian=False):
    h, w = img.shape[:2]
    data = img.tobytes() if data is None else data
    return SimpleNamespace(height=h, width=w, encoding=encoding, step=step or len(img.tobytes()) // h,
                           data=data, is_bigendian=bigendian)


@pytest.fixture
def rgb():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)


def test_rgb8_bgr8_rgba8_bgra8(rgb):
    np.testing.assert_array_equal(to_rgb(raw(rgb, "rgb8")), rgb)
    np.testing.assert_array_equal(to_rgb(raw(rgb[..., ::-1].copy(), "bgr8")), rgb)
    rgba = np.concatenate([rgb, np.full((6, 5, 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(to_rgb(raw(rgba, "rgba8")), rgb)
    bgra = np.concatenate([rgb[..., ::-1], np.full((6, 5, 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(to_rgb(raw(bgra, "bgra8")), rgb)


def test_mono8_and_mono16_become_grey_rgb(rgb):
    grey = rgb[..., 0].copy()
    out = to_rgb(raw(grey, "mono8"))
    assert out.shape == (6, 5, 3) and np.all(out[..., 1] == grey)
    wide = grey.astype(np.uint16) * 256 + 7
    np.testing.assert_array_equal(to_rgb(raw(wide, "mono16"))[..., 2], grey)
    np.testing.assert_array_equal(to_rgb(raw(wide.byteswap(), "mono16", bigendian=True))[..., 0], grey)


def test_row_padding_is_skipped(rgb):
    padded = np.zeros((6, 5 * 3 + 4), np.uint8)
    padded[:, :15] = rgb.reshape(6, 15)
    np.testing.assert_array_equal(to_rgb(raw(rgb, "rgb8", step=19, data=padded.tobytes())), rgb)


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_compressed(rgb, ext):
    big = cv2.resize(rgb, (64, 48), interpolation=cv2.INTER_NEAREST)
    ok, buf = cv2.imencode(ext, big[..., ::-1])
    out = to_rgb(SimpleNamespace(format=ext[1:], data=buf.tobytes()))
    assert out.shape == (48, 64, 3)
    if ext == ".png":
        np.testing.assert_array_equal(out, big)
    else:
        assert np.abs(out.astype(int) - big).mean() < 20


@pytest.mark.parametrize("msg, message", [
    (raw(np.zeros((4, 4, 3), np.uint8), "yuv422"), "unsupported image encoding 'yuv422'"),
    (raw(np.zeros((4, 4, 3), np.uint8), "rgb8", data=b"\x00" * 20), "20 data bytes .* truncated or wrong size"),
    (raw(np.zeros((4, 4, 3), np.uint8), "rgb8", step=6), "step 6 is smaller than a 4-pixel rgb8 row"),
    (SimpleNamespace(height=0, width=4, encoding="rgb8", step=12, data=b"", is_bigendian=0), "empty image"),
    (SimpleNamespace(format="jpeg", data=b"not a jpeg"), "cannot decode the compressed image"),
    (SimpleNamespace(format="jpeg", data=b""), "empty compressed image"),
])
def test_malformed_messages_raise_image_error(msg, message):
    with pytest.raises(ImageError, match=message):
        to_rgb(msg)
