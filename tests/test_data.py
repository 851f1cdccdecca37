"""Tests for chapter6_utils.data and chapter6_utils._net.

Every test runs offline (CHAPTER6_OFFLINE=1, an empty cache in tmp_path) except
the one that exercises the real probe, which asserts only a time bound.
"""
import socket
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from chapter6_utils import _net, data

MEAN = torch.tensor(data.IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(data.IMAGENET_STD).view(1, 3, 1, 1)


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("CHAPTER6_OFFLINE", "1")
    monkeypatch.setenv("CHAPTER6_CACHE", str(tmp_path / "cache"))
    _net._reset()
    yield
    _net._reset()


# --------------------------------------------------------------------------- #
# normalisation
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("shape", [(3, 7, 5), (4, 3, 6, 6), (1, 3, 2, 9)])
def test_normalize_denormalize_round_trip(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g)
    y = data.normalize(x)
    assert y.shape == x.shape
    assert not torch.allclose(y, x)  # it did something
    assert torch.allclose(data.denormalize(y), x, atol=1e-6, rtol=0)
    z = torch.randn(shape, generator=g)
    assert torch.allclose(data.normalize(data.denormalize(z)), z, atol=1e-6, rtol=0)


def test_normalize_values_per_channel():
    x = torch.rand(2, 3, 4, 4)
    expected = (x - MEAN) / STD
    assert torch.allclose(data.normalize(x), expected, atol=1e-7)
    assert torch.allclose(data.normalize(x[0]), expected[0], atol=1e-7)


def test_normalize_keeps_dtype():
    x = torch.rand(3, 4, 4, dtype=torch.float64)
    assert data.normalize(x).dtype == torch.float64
    assert torch.allclose(data.denormalize(data.normalize(x)), x, atol=1e-12)


@pytest.mark.parametrize("shape", [(3, 4), (4, 4, 4), (2, 1, 4, 4), (1, 1, 3, 4, 4)])
def test_wrong_shapes_raise_with_shape_in_message(shape):
    x = torch.rand(shape)
    for fn in (data.normalize, data.denormalize, data.pixel_bounds_like):
        with pytest.raises(ValueError) as info:
            fn(x)
        assert str(tuple(shape)) in str(info.value)
        assert "(N, 3, H, W)" in str(info.value)


# --------------------------------------------------------------------------- #
# pixel bounds
# --------------------------------------------------------------------------- #
def test_pixel_bounds_values_and_shape():
    low, high = data.pixel_bounds()
    assert low.shape == high.shape == (1, 3, 1, 1)
    assert low.dtype == torch.float32
    assert torch.allclose(low, (0 - MEAN) / STD)
    assert torch.allclose(high, (1 - MEAN) / STD)
    assert (low < 0).all() and (high > 0).all()
    x = torch.zeros(2, 3, 5, 5)
    assert torch.allclose(data.normalize(x), low.expand_as(x), atol=1e-7, rtol=0)
    assert torch.allclose(data.normalize(torch.ones_like(x)), high.expand_as(x), atol=1e-7, rtol=0)


def test_pixel_bounds_dtype_and_like():
    low, _ = data.pixel_bounds(dtype=torch.float64)
    assert low.dtype == torch.float64
    x = torch.rand(2, 3, 5, 4, dtype=torch.float64)
    lo, hi = data.pixel_bounds_like(x)
    assert lo.shape == hi.shape == x.shape and lo.dtype == x.dtype
    assert lo.is_contiguous()
    assert torch.equal(lo[1, :, 3, 2], low.view(3))
    # every normalised [0, 1] image lies inside the box
    y = data.normalize(x)
    assert (lo <= y + 1e-12).all() and (y <= hi + 1e-12).all()
    lo3, hi3 = data.pixel_bounds_like(x[0])
    assert lo3.shape == (3, 5, 4)
    assert torch.equal(lo3, lo[0]) and torch.equal(hi3, hi[0])


# --------------------------------------------------------------------------- #
# preprocess / to_image
# --------------------------------------------------------------------------- #
def _rgb_array(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("kind", ["pil", "uint8", "float", "tensor"])
@pytest.mark.parametrize("size", [224, 64])
def test_preprocess_shape_dtype(kind, size):
    arr = _rgb_array(300, 400)
    image = {
        "pil": Image.fromarray(arr),
        "uint8": arr,
        "float": arr.astype(np.float64) / 255,
        "tensor": torch.from_numpy(arr).permute(2, 0, 1).float() / 255,
    }[kind]
    x = data.preprocess(image, size=size)
    assert x.shape == (1, 3, size, size)
    assert x.dtype == torch.float32
    low, high = data.pixel_bounds()
    assert (x >= low - 1e-5).all() and (x <= high + 1e-5).all()


def test_preprocess_inputs_agree():
    arr = _rgb_array(120, 90)
    a = data.preprocess(Image.fromarray(arr), size=64)
    b = data.preprocess(arr, size=64)
    c = data.preprocess(torch.from_numpy(arr).permute(2, 0, 1).float() / 255, size=64)
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(b, c, atol=1e-5)


def test_preprocess_center_crop_recipe():
    # left half black, right half white, 256 x 512: short side 256 stays 256 for
    # size=224, then the centre 224 x 224 crop straddles the edge in the middle
    arr = np.zeros((256, 512, 3), dtype=np.uint8)
    arr[:, 256:] = 255
    img = data.to_image(data.preprocess(arr, size=224))
    assert img.shape == (224, 224, 3)
    assert np.allclose(img[:, :100], 0, atol=1e-5)
    assert np.allclose(img[:, 124:], 1, atol=1e-5)


@pytest.mark.parametrize("size, resized, frame", [(224, 256, 16), (64, 73, 4)])
def test_preprocess_crops_the_256_224_margin(size, resized, frame):
    # A white frame exactly as wide as the margin that the 256 -> 224 recipe crops
    # away: the result is all black. Resizing straight to `size` would keep the frame.
    arr = np.full((resized, resized, 3), 255, dtype=np.uint8)
    arr[frame:resized - frame, frame:resized - frame] = 0
    img = data.to_image(data.preprocess(arr, size=size))
    assert img.shape == (size, size, 3)
    assert img.max() < 1e-5


def test_to_image_inverts_preprocess_at_native_size():
    arr = _rgb_array(64, 64, seed=1)
    for image in (arr, Image.fromarray(arr)):
        out = data.to_image(data.preprocess(image, size=64))
        assert out.shape == (64, 64, 3)
        assert out.dtype == np.float32
        assert np.abs(out - arr / 255.0).max() < 1e-5
    out3 = data.to_image(data.preprocess(arr, size=64)[0])
    assert np.abs(out3 - arr / 255.0).max() < 1e-5


def test_to_image_clamps():
    x = torch.full((1, 3, 4, 4), 100.0)
    out = data.to_image(x)
    assert out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\)"):
        data.to_image(torch.zeros(2, 3, 4, 4))


def test_preprocess_rejects_bad_inputs():
    with pytest.raises(TypeError, match="list"):
        data.preprocess([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"\(5, 5, 4\)"):
        data.preprocess(np.zeros((5, 5, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="already normalised"):
        data.preprocess(data.preprocess(_rgb_array(64, 64), size=64)[0], size=64)


# --------------------------------------------------------------------------- #
# class names
# --------------------------------------------------------------------------- #
def test_imagenet_classes():
    names = data.imagenet_classes()
    assert len(names) == 1000
    assert names[258] == "Samoyed"
    assert len(set(names)) >= 998  # two duplicated names exist in the official list
    names[258] = "changed"
    assert data.imagenet_classes()[258] == "Samoyed"  # the cache was not edited


# --------------------------------------------------------------------------- #
# loading, samoyed, offline behaviour
# --------------------------------------------------------------------------- #
def test_load_image_local_round_trip(tmp_path):
    arr = _rgb_array(20, 30, seed=2)
    path = tmp_path / "pic.png"
    Image.fromarray(arr).save(path)
    img = data.load_image(path)
    assert img.mode == "RGB" and img.size == (30, 20)
    assert np.array_equal(np.asarray(img), arr)
    assert np.array_equal(np.asarray(data.load_image(str(path))), arr)
    # greyscale files come back as RGB
    Image.fromarray(arr[:, :, 0]).save(tmp_path / "grey.png")
    assert data.load_image(tmp_path / "grey.png").mode == "RGB"


def test_load_image_missing_file(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        data.load_image(missing)


def test_load_image_url_offline_raises_without_network(no_network):
    with pytest.raises(ConnectionError, match="offline.*pass the local file instead"):
        data.load_image("https://example.com/some/photo.jpg")
    assert no_network == []


def test_load_image_url_uses_cache_without_network():
    url = "https://example.com/some/photo.png"
    arr = _rgb_array(8, 8, seed=3)
    _net.cache_path_for(url).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(_net.cache_path_for(url))
    img = data.load_image(url)
    assert np.array_equal(np.asarray(img), arr)
    assert img.info["source"] == url


def test_samoyed_offline_falls_back_to_chelsea(capsys, no_network):
    img = data.samoyed()
    assert no_network == []
    assert isinstance(img, Image.Image) and img.mode == "RGB"
    assert "chelsea" in img.info["source"]
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == 1, out
    assert lines[0].startswith("[chapter6_utils] ")
    assert "chelsea" in lines[0] and "offline" in lines[0]


def test_samoyed_uses_cached_photo(capsys):
    arr = _rgb_array(40, 50, seed=4)
    _net.cache_path_for(data.SAMOYED_URL).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(_net.cache_path_for(data.SAMOYED_URL), format="JPEG")
    img = data.samoyed()
    assert img.info["source"] == "samoyed"
    assert img.size == (50, 40)
    assert capsys.readouterr().out == ""


def test_samoyed_damaged_cache_is_removed_and_falls_back(capsys):
    cached = _net.cache_path_for(data.SAMOYED_URL)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"<html>not a jpeg</html>")
    img = data.samoyed()
    assert "chelsea" in img.info["source"]
    damaged, fallback = capsys.readouterr().out.splitlines()  # one line each: the damage, the fallback
    assert "damaged" in damaged and str(cached) in damaged and "removed it" in damaged
    assert "chelsea" in fallback and "offline" in fallback
    assert not cached.exists()  # never reused


def test_samoyed_tensor_shape(capsys):
    x = data.samoyed_tensor(size=64)
    assert x.shape == (1, 3, 64, 64) and x.dtype == torch.float32


# --------------------------------------------------------------------------- #
# _net
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("value", ["1", "true", "YES"])
def test_online_forced_offline_is_instant(monkeypatch, value):
    monkeypatch.setenv("CHAPTER6_OFFLINE", value)

    def boom(*a, **k):
        raise AssertionError("the probe must not run when CHAPTER6_OFFLINE is set")

    monkeypatch.setattr(socket, "create_connection", boom)
    assert _net.online() is False


def test_online_real_probe_answers(monkeypatch):
    # Here the network is closed and the answer is False; a machine with network
    # answers True. Its bound is tested with a hanging connect and resolver below.
    monkeypatch.delenv("CHAPTER6_OFFLINE")
    assert isinstance(_net.online(), bool)


class _FakeConn:
    def close(self):
        pass


def test_online_probes_once_and_caches(monkeypatch):
    monkeypatch.delenv("CHAPTER6_OFFLINE")
    calls = []

    def fake(addr, timeout=None):
        calls.append(addr)
        return _FakeConn()

    monkeypatch.setattr(socket, "create_connection", fake)
    assert _net.online() is True
    assert _net.online() is True
    assert calls == [("download.pytorch.org", 443)]


def test_online_tries_second_host_after_fast_failure(monkeypatch):
    monkeypatch.delenv("CHAPTER6_OFFLINE")
    calls = []

    def fake(addr, timeout=None):
        calls.append(addr[0])
        if addr[0] == "download.pytorch.org":
            raise socket.gaierror("no DNS")
        return _FakeConn()

    monkeypatch.setattr(socket, "create_connection", fake)
    assert _net.online() is True
    assert calls == ["download.pytorch.org", "huggingface.co"]


def test_online_gives_up_after_timeout_without_second_host(monkeypatch):
    monkeypatch.delenv("CHAPTER6_OFFLINE")
    calls = []

    def fake(addr, timeout=None):
        calls.append(addr[0])
        raise socket.timeout("timed out")

    monkeypatch.setattr(socket, "create_connection", fake)
    assert _net.online() is False
    assert calls == ["download.pytorch.org"]


def test_online_bounded_even_if_connect_hangs(monkeypatch):
    # a resolver that hangs ignores socket timeouts; the probe must still give up, and
    # answer while the connect is still hanging (it returns only when the test releases it)
    monkeypatch.delenv("CHAPTER6_OFFLINE")
    release, returned = threading.Event(), threading.Event()

    def hang(*a, **k):
        release.wait(120)  # a hang guard, not a timing
        returned.set()
        raise socket.timeout("released by the test")

    monkeypatch.setattr(socket, "create_connection", hang)
    try:
        assert _net.online(timeout=0.2) is False
        assert not returned.is_set()  # the probe gave up on its own
    finally:
        release.set()


def test_mirror_is_probed_instead_of_the_hosts(monkeypatch):
    monkeypatch.delenv("CHAPTER6_OFFLINE")
    monkeypatch.setenv("CHAPTER6_MIRROR", "http://127.0.0.1:8765/")
    calls = []

    def fake(addr, timeout=None):
        calls.append(addr)
        return _FakeConn()

    monkeypatch.setattr(socket, "create_connection", fake)
    assert _net.online() is True and calls == [("127.0.0.1", 8765)]
    assert _net.via_mirror(data.SAMOYED_URL) == "http://127.0.0.1:8765/github.com/pytorch/hub/raw/master/images/dog.jpg"
    monkeypatch.setenv("CHAPTER6_MIRROR", "ftp://nowhere")
    with pytest.raises(ValueError, match="CHAPTER6_MIRROR='ftp://nowhere' is not an http"):
        _net.mirror()


def test_notice_is_one_prefixed_line(capsys):
    _net.notice("two\nlines  here")
    assert capsys.readouterr().out == "[chapter6_utils] two lines here\n"


def test_cache_dir_from_env(tmp_path, monkeypatch):
    target = tmp_path / "elsewhere" / "deeper"
    monkeypatch.setenv("CHAPTER6_CACHE", str(target))
    assert _net.cache_dir() == target and target.is_dir()
    p = _net.cache_path_for("https://github.com/pytorch/hub/raw/master/images/dog.jpg")
    assert p.parent == target and p.name.startswith("dog-") and p.suffix == ".jpg"
    assert p != _net.cache_path_for("https://example.com/dog.jpg")
