"""Shared fixtures. Tests run on CUDA when there is one (`device` fixture), else the CPU."""
import importlib.util
import os
import socket
import tempfile
import threading
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")  # headless figures in tests

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import chapter6_utils  # noqa: E402
from chapter6_utils import models  # noqa: E402
from chapter6_utils.data import normalize  # noqa: E402
from chapter6_utils.synthetic import TEST_SEED, make_lesions  # noqa: E402


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device the package would pick: CUDA when present (see chapter6_utils.device)."""
    return chapter6_utils.device()


@pytest.fixture(scope="module")
def cnn():
    """``lesion_cnn``, the bundled shortcut model, loaded once per test module."""
    return models.load("lesion_cnn")


@pytest.fixture(scope="module")
def x32():
    """32 malignant lesions with a ruler, normalised, from data no model was trained or scored on."""
    ruled = make_lesions(160, "biased", seed=TEST_SEED).select(label=1, ruler=True)
    assert len(ruled) >= 32
    return normalize(ruled.images[:32])


@pytest.fixture(scope="session")
def lesion_vit():
    """The bundled lesion_vit, shared by the tests that only read it (do not modify it)."""
    from chapter6_utils import models

    return models.load("lesion_vit")


@pytest.fixture(autouse=True)
def close_figures():
    """Close every figure a test made, so figures do not pile up across the suite."""
    yield
    plt.close("all")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "bundled(*names): needs these bundled model weights; skipped where they are missing")


def pytest_collection_modifyitems(config, items):
    """Skip a test marked ``@pytest.mark.bundled("lesion_cnn", ...)`` when one of those
    weight files is not in this copy of the package (a trimmed install, a fresh
    ``train`` run in progress), naming the missing ones."""
    from chapter6_utils import models

    for item in items:
        for mark in item.iter_markers("bundled"):
            missing = [n for n in mark.args if not models.weights_path(n).exists()]
            if missing:
                item.add_marker(pytest.mark.skip(reason=f"needs the bundled weights of {', '.join(missing)}"))


# --------------------------------------------------------------------------- network fakes
def _load_fake_hosts():
    path = Path(__file__).resolve().parent.parent / "scripts" / "fake_hosts.py"
    spec = importlib.util.spec_from_file_location("fake_hosts", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fake_hosts = _load_fake_hosts()


@pytest.fixture(scope="session")
def fh():
    """scripts/fake_hosts.py: the stand-in HTTP hosts on 127.0.0.1 and the file builders."""
    return fake_hosts


@pytest.fixture
def isolated_net(monkeypatch, tmp_path):
    """Empty caches in tmp_path (ours, torch hub's, the Hugging Face hub's), no mirror, not
    forced offline, and a fresh probe; returns the folders."""
    from chapter6_utils import _net

    folders = {"cache": tmp_path / "cache", "torch": tmp_path / "torch", "hf": tmp_path / "hf"}
    monkeypatch.setenv("CHAPTER6_CACHE", str(folders["cache"]))
    monkeypatch.setenv("TORCH_HOME", str(folders["torch"]))
    monkeypatch.setenv("HF_HUB_CACHE", str(folders["hf"]))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # the read-only fallback lands here
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    for var in ("CHAPTER6_OFFLINE", "CHAPTER6_MIRROR", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    _net._reset()
    yield folders
    _net._reset()


@pytest.fixture
def hosts(isolated_net, monkeypatch):
    """The stand-in hosts, running, with ``CHAPTER6_MIRROR`` pointing the package at them."""
    with fake_hosts.FakeHosts() as server:
        monkeypatch.setenv("CHAPTER6_MIRROR", server.url)
        yield server


@pytest.fixture
def no_network(monkeypatch):
    """Fail on any connection attempt and hang (until the test ends) on any name lookup.

    Yields the list of attempts; a test asserts it stays empty. The hang is released at
    teardown (or after 120 s, a hang guard), so code that waited on it shows up as an
    attempt rather than as a stuck suite."""
    attempts, release = [], threading.Event()

    def refuse(self, address, *args, **kwargs):
        attempts.append(("connect", address))
        raise OSError("no_network: a connection was attempted")

    def hang(host, *args, **kwargs):
        attempts.append(("getaddrinfo", host))
        release.wait(120)
        raise socket.gaierror("no_network: the resolver hung")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", hang)
    yield attempts
    release.set()
