"""Shared fixtures. Tests run on CUDA when there is one (`device` fixture), else the CPU."""
import os

os.environ.setdefault("MPLBACKEND", "Agg")  # headless figures in tests

import pytest  # noqa: E402
import torch  # noqa: E402

import chapter6_utils  # noqa: E402


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device the package would pick: CUDA when present (see chapter6_utils.device)."""
    return chapter6_utils.device()
