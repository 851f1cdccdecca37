"""The trainer: a tiny run learns, saves loadable weights with metadata, and the CLI parses."""
import pytest
import torch

from chapter6_utils import models, train
from chapter6_utils.train import Recipe


def test_tiny_training_run_learns_and_saves(tmp_path):
    # One epoch of 1,536 biased images: too little for the lesion, enough for the ruler,
    # which alone gives ~90% on the biased split. Chance is 50%.
    recipe = Recipe("biased", epochs=1, n_per_epoch=1536, lr=3e-3, weight_decay=0.0, seed_offset=7)
    lines = []
    model, meta = train.train_model("lesion_cnn", recipe=recipe, out_dir=tmp_path, eval_n=400, log=lines.append)
    assert set(meta["accuracy"]) == {"biased", "unbiased", "swapped"}
    assert meta["accuracy"]["biased"] > 0.7, meta["accuracy"]
    assert any("epoch 1/1" in line for line in lines)
    # the saved file loads through the registry, with the record of its training
    loaded = models.load("lesion_cnn", weights_dir=tmp_path, pretrained=True)
    assert loaded.ch6.weights == "bundled"
    assert loaded.ch6.extra["recipe"]["n_per_epoch"] == 1536
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)


def test_training_is_reproducible(tmp_path):
    recipe = Recipe("biased", epochs=1, n_per_epoch=128, lr=1e-3, weight_decay=0.0, seed_offset=8)
    a, _ = train.train_model("lesion_cnn", recipe=recipe, eval_n=64, log=lambda m: None)
    b, _ = train.train_model("lesion_cnn", recipe=recipe, eval_n=64, log=lambda m: None)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-6)


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="no training recipe for 'resnet18'.*lesion_cnn"):
        train.train_model("resnet18")


def test_cli_rejects_unknown_model(capsys):
    with pytest.raises(SystemExit):
        train.main(["--model", "nope"])
    assert "invalid choice" in capsys.readouterr().err


def test_confusion_matrix_counts_every_image():
    m = models.load("lesion_cnn")
    cm = train.confusion(m, "swapped", n=200, seed=train.TEST_SEED)
    assert cm.shape == (2, 2) and int(cm.sum()) == 200 and int(cm[0].sum()) == 100


def test_evaluation_seeds_are_not_training_seeds():
    training = {train.TRAIN_SEED + 1000 * rc.seed_offset + e for rc in train.RECIPES.values() for e in range(rc.epochs)}
    assert train.EVAL_SEED not in training and train.TEST_SEED not in training


def test_bundled_weights_were_trained_with_the_current_recipes():
    """The recipe stored with each bundled model is the one RECIPES holds today (fields
    added later keep their defaults), so `train --all` reproduces what is shipped."""
    for name, rc in train.RECIPES.items():
        stored = torch.load(models.weights_path(name), map_location="cpu", weights_only=True)["meta"]["recipe"]
        current = rc.__dict__
        assert {k: current[k] for k in stored} == stored, name
        defaults = Recipe(rc.split, 1, 1, 0.1, 0.0).__dict__
        assert all(current[k] == defaults[k] for k in current.keys() - stored.keys()), name


def test_fixed_set_with_shuffled_labels(tmp_path):
    recipe = Recipe("biased", epochs=2, n_per_epoch=64, lr=1e-3, weight_decay=0.0, batch_size=32,
                    seed_offset=9, fixed_set=True, shuffle_labels=True)
    data, labels = train.training_set(recipe)
    assert len(labels) == 64 and torch.equal(labels.sort().values, data.labels.sort().values)
    assert not torch.equal(labels, data.labels)
    assert train.training_set(train.RECIPES["lesion_cnn"]) is None
    _, meta = train.train_model("lesion_cnn", recipe=recipe, eval_n=64, log=lambda m: None)
    assert 0.0 <= meta["train_accuracy"] <= 1.0 and meta["recipe"]["shuffle_labels"] is True


def test_generator_training_is_reproducible_and_loads(tmp_path):
    recipe = train.GeneratorRecipe("unbiased", epochs=1, n_per_epoch=128, lr=2e-3, weight_decay=0.0, seed_offset=9)
    a, meta = train.train_model("lesion_generator", recipe=recipe, out_dir=tmp_path, eval_n=32, log=lambda m: None)
    b, _ = train.train_generator("lesion_generator", recipe=recipe, eval_n=32, log=lambda m: None)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-6)
    assert meta["recon_mse_per_pixel"] > 0 and meta["latent_dim"] == 64
    loaded = models.load("lesion_generator", weights_dir=tmp_path, pretrained=True)
    assert loaded.ch6.classes is None and loaded.ch6.extra["recipe"]["n_per_epoch"] == 128


def test_generator_seeds_are_disjoint_from_the_classifiers_and_evaluation():
    def seeds(rc):
        return {train.TRAIN_SEED + 1000 * rc.seed_offset + e for e in range(rc.epochs)}
    classifier = set().union(*(seeds(rc) for rc in train.RECIPES.values()))
    generator = set().union(*(seeds(rc) for rc in train.GENERATOR_RECIPES.values()))
    assert not generator & classifier
    assert train.EVAL_SEED not in generator and train.TEST_SEED not in generator
