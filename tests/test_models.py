"""The model registry: bundled weights, metadata, the offline fallback, errors."""
import os
import subprocess
import sys

import pytest
import torch

import chapter6_utils
from chapter6_utils import models
from chapter6_utils.data import normalize
from chapter6_utils.synthetic import TEST_SEED, make_lesions
from chapter6_utils.train import RECIPES, accuracy_by_split, predict, training_set

BUNDLED = ["lesion_cnn", "lesion_cnn_clean", "lesion_resnet", "lesion_vit", "lesion_vit_seed2"]
SHUFFLED = "lesion_cnn_shuffled"  # data randomisation: at chance on new images by design
GENERATORS = ["lesion_generator"]  # bundled too, but maps latent codes to images (no classes)
IMAGENET = ["resnet18", "vgg16", "vit_small_patch16_224", "vit_small_patch8_224.dino"]


def test_available_lists_every_model():
    assert models.available() == BUNDLED + [SHUFFLED] + GENERATORS + IMAGENET


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown model 'lesion_cnnn'.*lesion_cnn, lesion_cnn_clean"):
        models.load("lesion_cnnn")


def test_bad_pretrained_value():
    with pytest.raises(ValueError, match="pretrained must be"):
        models.load("lesion_cnn", pretrained="yes")


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_models_load_with_metadata(name):
    m = models.load(name)
    assert not m.training
    assert m.ch6.name == name and m.ch6.weights == "bundled" and m.ch6.notice is None
    assert m.ch6.classes == ("benign", "malignant") and m.ch6.input_size == 64
    assert m.ch6.extra["accuracy"]["biased"] > 0.5  # the training record travels with the weights
    out = m(normalize(make_lesions(4, "biased", seed=TEST_SEED).images))
    assert out.shape == (4, 2) and torch.isfinite(out).all()


def test_bundled_generator_loads_and_draws_images():
    g = models.load("lesion_generator")
    assert not g.training and g.ch6.weights == "bundled" and g.ch6.classes is None
    assert g.ch6.extra["recon_mse_per_pixel"] < 0.02  # it reconstructs lesion images, not a blank
    z = torch.randn(3, g.latent_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        img = g(z)
    assert img.shape == (3, 3, 64, 64) and img.min() >= 0 and img.max() <= 1
    with pytest.raises(ValueError, match=r"latent codes must have shape \(N, 64\)"):
        g(torch.zeros(3, 10))


def test_bundled_weights_fit_the_size_budget():
    total = sum(models.weights_path(n).stat().st_size for n in BUNDLED + [SHUFFLED] + GENERATORS)
    assert total < 30e6, f"bundled weights take {total / 1e6:.1f} MB (> 30 MB)"


def test_shuffled_label_model_memorised_its_training_set():
    """Adebayo et al.'s data randomisation: the model fits permuted labels it was shown
    and is at chance on new images (the standard error at n = 2000 is about 1 point)."""
    m = models.load(SHUFFLED)
    assert m.ch6.weights == "bundled" and isinstance(m, models.LesionCNN)
    fixed, labels = training_set(RECIPES[SHUFFLED])
    assert (labels != fixed.labels).any()  # the labels it learned are not the true ones
    fitted = float((predict(m, fixed.images) == labels).float().mean())
    assert fitted >= 0.9 and fitted == pytest.approx(m.ch6.extra["train_accuracy"], abs=1e-6)
    for split, acc in m.ch6.extra["accuracy"].items():
        assert 0.4 <= acc <= 0.6, (split, acc)


def test_missing_bundled_weights_fall_back_visibly(tmp_path, capsys):
    m = models.load("lesion_cnn", weights_dir=tmp_path)
    assert m.ch6.weights == "random" and "RANDOM" in m.ch6.notice
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "lesion_cnn" in out and "chapter6_utils.train" in out
    with pytest.raises(RuntimeError, match="could not load trained weights"):
        models.load("lesion_cnn", pretrained=True, weights_dir=tmp_path)


def test_pretrained_false_gives_random_weights_silently(capsys):
    torch.manual_seed(0)
    a = models.load("lesion_cnn", pretrained=False)
    b = models.load("lesion_cnn")
    assert a.ch6.weights == "random" and a.ch6.notice is None and capsys.readouterr().out == ""
    assert not torch.equal(a.features[0].weight, b.features[0].weight)


def test_real_network_state_never_hangs_a_load():
    """Without forcing offline, on whatever network this machine has, loading a torchvision
    model returns trained or random weights; the subprocess timeout is a hang guard only
    (the bounds themselves are tested with fakes in test_data and test_safe_loading)."""
    code = "from chapter6_utils import models; print(models.load('resnet18').ch6.weights)"
    env = {k: v for k, v in os.environ.items() if k not in ("CHAPTER6_OFFLINE", "HF_HUB_OFFLINE")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] in ("imagenet", "random")


def test_vit_input_normalisation_is_folded_exactly():
    """ViT-S/16 expects mean=std=0.5 input: load() folds the change into the patch embedding."""
    torch.manual_seed(0)
    raw = models.build("vit_small_patch16_224").eval()
    folded = models.build("vit_small_patch16_224").eval()
    folded.load_state_dict(raw.state_dict())
    models._fold_input_normalisation(folded, "vit_small_patch16_224")
    x01 = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        expected = raw((x01 - 0.5) / 0.5)
        got = folded(normalize(x01))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_device_helper():
    d = chapter6_utils.device()
    assert d.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_load_to_device():
    m = models.load("lesion_cnn", device=chapter6_utils.device())
    assert next(m.parameters()).device.type == chapter6_utils.device().type


# --------------------------------------------------------------------------- the shortcut
@pytest.fixture(scope="module")
def accuracies():
    """Accuracy per split on 3000 fresh images per split (TEST_SEED: never used in training;
    the standard error of each figure is about 0.5 points)."""
    return {name: accuracy_by_split(models.load(name), n=3000, seed=TEST_SEED) for name in BUNDLED}


@pytest.mark.parametrize("name", ["lesion_cnn", "lesion_resnet", "lesion_vit", "lesion_vit_seed2"])
def test_shortcut_models_took_the_ruler(accuracies, name):
    acc = accuracies[name]
    assert acc["biased"] >= 0.95, acc
    assert acc["swapped"] <= 0.70, acc


def test_clean_model_reads_the_lesion(accuracies):
    acc = accuracies["lesion_cnn_clean"]
    assert min(acc.values()) >= 0.88, acc
