"""Shared fixtures. Tests run on CUDA when there is one (`device` fixture), else the CPU."""
import os

os.environ.setdefault("MPLBACKEND", "Agg")  # headless figures in tests

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import chapter6_utils  # noqa: E402


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device the package would pick: CUDA when present (see chapter6_utils.device)."""
    return chapter6_utils.device()


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
