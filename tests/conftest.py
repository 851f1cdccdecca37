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


@pytest.fixture(autouse=True)
def close_figures():
    """Close every figure a test made, so figures do not pile up across the suite."""
    yield
    plt.close("all")
