"""Agreement with Quantus 0.6 (Hedström et al., 2023, JMLR) on one small setting: the
efficient MPRT (eMPRT) of the plain gradient on lesion_cnn, eight lesions with a ruler.

Conventions, and where ours differ from Quantus's defaults (matched here as stated):

* Randomisation draw: Quantus seeds ``torch.manual_seed(seed + 1)`` before *every*
  layer's ``reset_parameters()`` (all layers get draws from one seed); ours seeds layer j
  of seed s with ``s * 10007 + j`` (``evaluation.randomized_models``). Matched: the test
  builds the fully random model Quantus's way and gives it to both.
* Which modules: Quantus re-initialises every module that has ``reset_parameters``; ours
  every module with parameters of its own. On lesion_cnn both are its six convolutions
  and two linear layers.
* Histogram bins: Quantus 0.6 chooses the number of bins per data set (``find_n_bins``)
  unless ``complexity_func_kwargs={"n_bins": ...}`` is given; ours uses 100. Matched: 100.
* Map: Quantus calls the explanation function with numpy arrays and histograms what it
  returns, (N, 1, H, W) here, with ``abs=False`` and ``normalise=False`` (its eMPRT
  defaults); ours histograms the (N, H, W) map as the method returns it. Same values.
* Score: both report the relative rise ``(H_random - H_trained) / H_trained``; Quantus
  reads the fully random model only (``skip_layers=True``), as ours does.
* Model outputs: Quantus also records the entropy of the model's outputs, which must be
  probabilities (``softmax=True``); the explanation score does not use them.
* Precision: Quantus bins float32 values with numpy; ours bins float64 values with
  ``torch.histc``. A value on a bin edge can land in the neighbouring bin: tolerance 0.01
  per image and 0.002 on the mean.
"""
import copy

import numpy as np
import pytest
import torch

from chapter6_utils import evaluation as ev
from chapter6_utils import models
from chapter6_utils.data import normalize
from chapter6_utils.synthetic import make_lesions
from chapter6_utils.synthetic import TEST_SEED

quantus = pytest.importorskip("quantus")


def _quantus_random(model, seed):
    """The fully random model of Quantus's ``get_random_layer_generator`` (bottom-up)."""
    work = copy.deepcopy(model)
    for _, module in work.named_modules():
        if hasattr(module, "reset_parameters"):
            torch.manual_seed(seed + 1)
            module.reset_parameters()
    return work.eval()


def _explain(model, inputs, targets, **_):
    x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
    t = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    return ev.METHODS["gradient"](model, x, t).numpy()[:, None]


def test_emprt_agrees_with_quantus():
    model = models.load("lesion_cnn").eval()
    ruled = make_lesions(96, "biased", seed=TEST_SEED).select(label=1, ruler=True)
    x = normalize(ruled.images[:8])
    y = np.ones(8, dtype=int)
    metric = quantus.EfficientMPRT(complexity_func_kwargs={"n_bins": 100}, layer_order="bottom_up",
                                   skip_layers=True, seed=42, disable_warnings=True, display_progressbar=False)
    theirs = np.asarray(metric(model=model, x_batch=x.numpy(), y_batch=y, a_batch=None, channel_first=True,
                               explain_func=_explain, device="cpu", softmax=True), dtype=np.float64)
    random_model = _quantus_random(model, 42)
    h0 = ev.map_entropy(ev.METHODS["gradient"](model, x, 1))
    h1 = ev.map_entropy(ev.METHODS["gradient"](random_model, x, 1))
    ours = ((h1 - h0) / h0).numpy()
    assert theirs.shape == (8,)
    assert np.abs(ours - theirs).max() < 0.01, (ours, theirs)
    assert abs(ours.mean() - theirs.mean()) < 0.002
    assert ours.mean() > 0  # the gradient's maps do become more complex: the comparison is not of zeros
