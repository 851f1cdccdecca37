"""Regenerate the bundled lesion models: ``python -m chapter6_utils.train --all``.

Each model is trained from a fixed seed on freshly generated lesion images (a new batch
of images every epoch, so there is nothing to overfit), then scored on data made with
``EVAL_SEED``, a seed the training never uses, on every split:

* ``biased``: the training distribution (ruler on ~85% of malignant, ~5% of benign);
* ``unbiased``: the ruler independent of the label;
* ``swapped``: the ruler on ~85% of *benign* lesions. A model that learned the shortcut
  collapses here; a model that reads the lesion does not.

One model is the exception by design: ``lesion_cnn_shuffled`` sees one fixed set of
images every epoch, with permuted labels, and can only memorise them (Adebayo et al.'s
data randomisation test); its ``meta["train_accuracy"]`` says how well it did.

The same command trains ``lesion_generator``, the image generator behind DGN-AM: the
decoder of a small variational autoencoder fitted to lesion images of the unbiased split
(half of them with a ruler, so the generator can draw rulers for either class).

Training seeds are ``TRAIN_SEED + 1000 * k + epoch``; ``EVAL_SEED`` and ``TEST_SEED`` (used
by the test suite) are far from them, so every reported figure is on unseen images.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _checkpoints, _checks
from . import models as _models
from .data import normalize
from .synthetic import EVAL_SEED, SPLITS, TEST_SEED, TRAIN_SEED, make_lesions

__all__ = ["RECIPES", "Recipe", "GENERATOR_RECIPES", "GeneratorRecipe", "train_generator", "train_model",
           "eval_set", "evaluate", "predict", "accuracy_by_split", "confusion", "main",
           "EVAL_SEED", "TEST_SEED", "TRAIN_SEED", "training_set"]

N_SHUFFLED, EPOCHS_SHUFFLED = 256, 60


@dataclass(frozen=True)
class Recipe:
    """How one bundled lesion classifier is trained.

    Attributes
    ----------
    split : str
        The split of the training data (:data:`chapter6_utils.synthetic.SPLITS`).
    epochs : int
    n_per_epoch : int
        Fresh images per epoch (or the size of the fixed set).
    lr, weight_decay : float
        AdamW's learning rate and weight decay.
    batch_size : int, default 64
    seed_offset : int, default 0
        Which block of training seeds the model draws its data and weights from.
    fixed_set : bool, default False
        One fixed set of ``n_per_epoch`` images, seen every epoch.
    shuffle_labels : bool, default False
        Permute the fixed set's labels (Adebayo et al., 2018's data randomisation), so that
        the model can only memorise.
    """
    split: str
    epochs: int
    n_per_epoch: int
    lr: float
    weight_decay: float
    batch_size: int = 64
    seed_offset: int = 0  # which block of training seeds the model draws its data from
    # Adebayo et al.'s (2018) data randomisation: one fixed set of n_per_epoch images,
    # seen every epoch, with its labels permuted, so that the model can only memorise.
    fixed_set: bool = False
    shuffle_labels: bool = False


RECIPES = {
    "lesion_cnn": Recipe("biased", epochs=8, n_per_epoch=8000, lr=2e-3, weight_decay=1e-4, seed_offset=0),
    "lesion_cnn_clean": Recipe("unbiased", epochs=10, n_per_epoch=8000, lr=2e-3, weight_decay=1e-4, seed_offset=1),
    "lesion_resnet": Recipe("biased", epochs=6, n_per_epoch=8000, lr=2e-3, weight_decay=1e-4, seed_offset=2),
    "lesion_vit": Recipe("biased", epochs=10, n_per_epoch=8000, lr=1e-3, weight_decay=0.05, seed_offset=3),
    # lesion_vit's recipe with another seed (initial weights and training images): the
    # exercises ask which of its attention heads are a property of the recipe and which
    # an accident of one training run.
    "lesion_vit_seed2": Recipe("biased", epochs=10, n_per_epoch=8000, lr=1e-3, weight_decay=0.05, seed_offset=9),
    "lesion_cnn_shuffled": Recipe("biased", epochs=EPOCHS_SHUFFLED, n_per_epoch=N_SHUFFLED, lr=1e-3,
                                  weight_decay=0.0, batch_size=32, seed_offset=5, fixed_set=True,
                                  shuffle_labels=True),
}


def training_set(rc: Recipe):
    """The fixed training images and labels of a ``fixed_set`` recipe.

    Parameters
    ----------
    rc : Recipe

    Returns
    -------
    (LesionSet, torch.Tensor) or None
        The images and their labels (N,), permuted when ``shuffle_labels``; None for other
        recipes, which draw fresh images every epoch.
    """
    if not rc.fixed_set:
        return None
    data = make_lesions(rc.n_per_epoch, rc.split, seed=TRAIN_SEED + 1000 * rc.seed_offset)
    labels = data.labels
    if rc.shuffle_labels:
        # Its own generator: the global one drives the batch order, as for the other models.
        shuffler = torch.Generator().manual_seed(TRAIN_SEED + rc.seed_offset)
        labels = labels[torch.randperm(len(labels), generator=shuffler)]
    return data, labels


@dataclass(frozen=True)
class GeneratorRecipe(Recipe):
    """How the lesion image generator (a VAE's decoder) is trained: a :class:`Recipe` plus

    Attributes
    ----------
    kl_weight : float, default 0.05
        beta, the weight of the KL term: lower keeps rulers and hair sharper, higher makes
        samples of the prior cleaner.
    latent_dim : int, default 64
    """
    kl_weight: float = 0.05  # beta: lower keeps rulers and hair sharper, higher makes prior samples cleaner
    latent_dim: int = 64


#: Generators train with their own loop (a VAE), kept apart so the classifiers' path is untouched.
GENERATOR_RECIPES = {
    "lesion_generator": GeneratorRecipe("unbiased", epochs=12, n_per_epoch=8000, lr=2e-3, weight_decay=0.0,
                                        seed_offset=4),
}


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Predicted labels of lesion images, in eval mode.

    The model's own train/eval mode is restored afterwards. Batches of 64 keep a CNN's
    activations in cache: on 2 CPU cores ``lesion_cnn`` scores 2,000 images in 2.2 s this
    way and in 3.9 s in batches of 256 (same predictions).

    Parameters
    ----------
    model : torch.nn.Module
        A lesion classifier (it normalises nothing: this function does).
    images : torch.Tensor
        (N, 3, 64, 64) float in [0, 1].
    batch_size : int, default 64
        Images per forward pass, >= 1.

    Returns
    -------
    torch.Tensor
        (N,) int64 on the CPU.

    Raises
    ------
    ValueError, TypeError
        If ``images`` is not a float 4-D tensor or ``batch_size < 1``.
    """
    batch_size = _checks.integer(batch_size, "batch_size", low=1, hint="images per forward pass")
    _checks.tensor(images, "images", dim=4, floating=True, shape_hint="(N, 3, H, W) in [0, 1]")
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = [model(normalize(images[i:i + batch_size].to(dev))).argmax(1).cpu()
               for i in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out)


@functools.lru_cache(maxsize=6)
def eval_set(split: str, n: int = 2000, seed: int = EVAL_SEED):
    """The evaluation images of ``split``, cached.

    Scoring several models on the same images is common, and generating them costs more
    than a forward pass.

    Parameters
    ----------
    split : str
    n : int, default 2000
        Number of images.
    seed : int, default EVAL_SEED
        The data's seed (:data:`chapter6_utils.synthetic.EVAL_SEED`: no training run uses it).

    Returns
    -------
    LesionSet
    """
    return make_lesions(n, split, seed=seed)


def evaluate(model: nn.Module, split: str, n: int = 2000, seed: int = EVAL_SEED) -> float:
    """Accuracy of ``model`` on fresh lesion images of ``split``.

    Parameters
    ----------
    model : torch.nn.Module
    split : str
    n : int, default 2000
        Number of images.
    seed : int, default EVAL_SEED
        The data's seed (:data:`chapter6_utils.synthetic.EVAL_SEED`: no training run uses it).

    Returns
    -------
    float
        In [0, 1].
    """
    data = eval_set(split, n, seed)
    return float((predict(model, data.images) == data.labels).float().mean())


def accuracy_by_split(model: nn.Module, n: int = 2000, seed: int = EVAL_SEED) -> dict:
    """Accuracy on fresh data of every split.

    Parameters
    ----------
    model : torch.nn.Module
    n : int, default 2000
        Number of images.
    seed : int, default EVAL_SEED
        The data's seed (:data:`chapter6_utils.synthetic.EVAL_SEED`: no training run uses it).

    Returns
    -------
    dict
        ``{split: accuracy}`` for "biased", "unbiased" and "swapped".
    """
    return {split: evaluate(model, split, n, seed) for split in SPLITS}


def confusion(model: nn.Module, split: str, n: int = 2000, seed: int = EVAL_SEED) -> torch.Tensor:
    """The confusion matrix of ``model`` on fresh images of ``split``.

    Parameters
    ----------
    model : torch.nn.Module
    split : str
    n : int, default 2000
        Number of images.
    seed : int, default EVAL_SEED
        The data's seed (:data:`chapter6_utils.synthetic.EVAL_SEED`: no training run uses it).

    Returns
    -------
    torch.Tensor
        (2, 2) counts; rows the true class (benign, malignant), columns the predicted one.
    """
    data = eval_set(split, n, seed)
    pred = predict(model, data.images)
    return torch.bincount(data.labels * 2 + pred, minlength=4).view(2, 2)


def train_model(name: str, *, recipe: Recipe | None = None, out_dir: str | Path | None = None,
                eval_n: int = 2000, log=None) -> tuple[nn.Module, dict]:
    """Train ``name`` with its recipe (or the one given) and save it.

    Parameters
    ----------
    name : str
        A key of :data:`RECIPES` (or of :data:`GENERATOR_RECIPES`: then
        :func:`train_generator` runs).
    recipe : Recipe, optional
        Instead of the registered one.
    out_dir : str or pathlib.Path, optional
        Where ``<name>.pt`` and its SHA-256 (in ``SHA256SUMS``) are written (default: the
        package's weights folder).
    eval_n : int, default 2000
        Images per split for the reported accuracies.
    log : callable, optional
        Receives progress lines (default: ``print``).

    Returns
    -------
    model : torch.nn.Module
    meta : dict
        The recipe, the accuracy per split on ``EVAL_SEED`` data and the training time;
        stored beside the weights.

    Raises
    ------
    ValueError
        If ``name`` has no recipe.
    """
    if name in GENERATOR_RECIPES:
        return train_generator(name, recipe=recipe, out_dir=out_dir, eval_n=eval_n, log=log)
    if name not in RECIPES:
        raise ValueError(f"no training recipe for {name!r}; trainable models: "
                         f"{', '.join([*RECIPES, *GENERATOR_RECIPES])}")
    rc = recipe or RECIPES[name]
    log = log or (lambda msg: print(msg, flush=True))  # flush: progress shows even when piped to a file
    torch.manual_seed(TRAIN_SEED + rc.seed_offset)
    model = _models.build(name)
    opt = torch.optim.AdamW(model.parameters(), lr=rc.lr, weight_decay=rc.weight_decay)
    steps = rc.epochs * -(-rc.n_per_epoch // rc.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=rc.lr, total_steps=steps, pct_start=0.15)
    fixed = training_set(rc)
    t0 = time.perf_counter()
    for epoch in range(rc.epochs):
        if fixed is None:
            data = make_lesions(rc.n_per_epoch, rc.split, seed=TRAIN_SEED + 1000 * rc.seed_offset + epoch)
            x_all, y_all = normalize(data.images), data.labels
        else:
            x_all, y_all = normalize(fixed[0].images), fixed[1]
        order = torch.randperm(len(y_all))
        model.train()
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(order), rc.batch_size):
            idx = order[i:i + rc.batch_size]
            x, y = x_all[idx], y_all[idx]
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            total += len(y)
        log(f"  {name} epoch {epoch + 1}/{rc.epochs}: loss {loss_sum / total:.3f}, "
            f"train acc {correct / total:.3f} ({time.perf_counter() - t0:.0f} s)")
    model.eval()
    acc = accuracy_by_split(model, n=eval_n)
    meta = {"recipe": rc.__dict__ | {}, "accuracy": acc, "eval_seed": EVAL_SEED, "eval_n": eval_n,
            "train_seconds": round(time.perf_counter() - t0, 1), "torch": str(torch.__version__)}
    if fixed is not None:  # how well it fits the set it saw (for shuffled labels: memorised)
        meta["train_accuracy"] = float((predict(model, fixed[0].images) == fixed[1]).float().mean())
        log(f"  {name} accuracy on its {len(fixed[1])} training images: {meta['train_accuracy']:.3f}")
    if out_dir is not None:
        _save(name, model, meta, out_dir, log)
    return model, meta


class _LesionEncoder(nn.Module):
    """The VAE's encoder (used only during training): image -> (mean, log-variance) of z."""

    def __init__(self, latent_dim: int, widths=(16, 32, 64, 128)):
        super().__init__()
        layers, cin = [], 3
        for cout in widths:  # 64 -> 32 -> 16 -> 8 -> 4
            layers += [nn.Conv2d(cin, cout, 4, 2, 1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2)]
            cin = cout
        self.net = nn.Sequential(*layers, nn.Flatten())
        self.fc = nn.Linear(widths[-1] * 16, 2 * latent_dim)

    def forward(self, x):
        return self.fc(self.net(x)).chunk(2, dim=1)


def _vae_losses(encoder, decoder, x):
    """Per-image squared reconstruction error and KL(q(z|x) || N(0, I)), both summed."""
    mu, logvar = encoder(x)
    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()  # reparameterisation: noise from the seeded global RNG
    recon = ((decoder(z) - x) ** 2).flatten(1).sum(1)
    kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(1)
    return recon, kl


def train_generator(name: str = "lesion_generator", *, recipe: GeneratorRecipe | None = None,
                    out_dir: str | Path | None = None, eval_n: int = 2000, log=None) -> tuple[nn.Module, dict]:
    """Train a lesion image generator as the decoder of a VAE and save it.

    Loss per image: ``||x - G(z)||^2 + beta * KL(q(z|x) || N(0, I))`` with z drawn from the
    encoder's posterior (Kingma & Welling, 2014). The KL term pulls the codes of real images
    towards the standard normal, which makes decoded prior samples look like lesions and is
    what DGN-AM's latent penalty (equation 11 (book/equations.md)) relies on.

    Parameters
    ----------
    name : str, default "lesion_generator"
        A key of :data:`GENERATOR_RECIPES`.
    recipe : GeneratorRecipe, optional
    out_dir : str or pathlib.Path, optional
    eval_n : int, default 2000
    log : callable, optional
        As in :func:`train_model`.

    Returns
    -------
    decoder : torch.nn.Module
    meta : dict
        The recipe, the reconstruction error and KL on ``EVAL_SEED`` images, the training
        time.
    """
    if name not in GENERATOR_RECIPES:
        raise ValueError(f"no generator recipe for {name!r}; generators: {', '.join(GENERATOR_RECIPES)}")
    rc = recipe or GENERATOR_RECIPES[name]
    log = log or (lambda msg: print(msg, flush=True))
    torch.manual_seed(TRAIN_SEED + rc.seed_offset)
    decoder = _models.LesionGenerator(latent_dim=rc.latent_dim)
    encoder = _LesionEncoder(rc.latent_dim)
    params = [*encoder.parameters(), *decoder.parameters()]
    opt = torch.optim.Adam(params, lr=rc.lr)
    steps = rc.epochs * -(-rc.n_per_epoch // rc.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=rc.lr, total_steps=steps, pct_start=0.1)
    t0 = time.perf_counter()
    for epoch in range(rc.epochs):
        images = make_lesions(rc.n_per_epoch, rc.split, seed=TRAIN_SEED + 1000 * rc.seed_offset + epoch).images
        order = torch.randperm(len(images))
        encoder.train()
        decoder.train()
        r_sum, k_sum = 0.0, 0.0
        for i in range(0, len(order), rc.batch_size):
            x = images[order[i:i + rc.batch_size]]
            recon, kl = _vae_losses(encoder, decoder, x)
            loss = (recon + rc.kl_weight * kl).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            r_sum += float(recon.detach().sum())
            k_sum += float(kl.detach().sum())
        log(f"  {name} epoch {epoch + 1}/{rc.epochs}: recon {r_sum / len(order):.1f}, KL {k_sum / len(order):.1f} "
            f"({time.perf_counter() - t0:.0f} s)")
    encoder.eval()
    decoder.eval()
    with torch.no_grad():
        x = eval_set("unbiased", eval_n).images
        recon, kl = _vae_losses(encoder, decoder, x)
    meta = {"recipe": rc.__dict__ | {}, "recon_mse_per_pixel": round(float(recon.mean()) / x[0].numel(), 5),
            "kl": round(float(kl.mean()), 2), "eval_seed": EVAL_SEED, "eval_n": eval_n,
            "latent_dim": rc.latent_dim, "train_seconds": round(time.perf_counter() - t0, 1),
            "torch": str(torch.__version__)}
    if out_dir is not None:
        _save(name, decoder, meta, out_dir, log)
    return decoder, meta


def _save(name: str, model: nn.Module, meta: dict, out_dir, log) -> None:
    """Write ``{"state_dict", "meta"}`` where :func:`chapter6_utils.models.load` looks for ``name``,
    and its SHA-256 into the folder's ``SHA256SUMS``."""
    path = _models.weights_path(name, Path(out_dir))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")  # a crash mid-save leaves the old file whole
    torch.save({"state_dict": model.state_dict(), "meta": meta}, tmp)
    os.replace(tmp, path)
    # models.load checks every bundled file against this manifest before unpickling it
    _checkpoints.write_manifest(path.parent, [path.name])
    log(f"  saved {path} ({path.stat().st_size / 1e6:.2f} MB) and its SHA-256 in {path.parent / _checkpoints.MANIFEST}")


def main(argv=None) -> int:
    """The command line: ``python -m chapter6_utils.train --all`` (or ``--model NAME``, ``--manifest``).

    Parameters
    ----------
    argv : list of str, optional
        Default: ``sys.argv[1:]``.

    Returns
    -------
    int
        The exit status (0).
    """
    p = argparse.ArgumentParser(prog="python -m chapter6_utils.train", description=__doc__.split("\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--model", choices=[*RECIPES, *GENERATOR_RECIPES], action="append",
                   help="model to train (repeatable)")
    g.add_argument("--all", action="store_true", help="train every bundled model")
    g.add_argument("--manifest", action="store_true",
                   help="only (re)write SHA256SUMS for the *.pt files in --out (for weights you trust)")
    p.add_argument("--out", default=str(_models.WEIGHTS_DIR), help="where to write <name>.pt")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.manifest:
        path = _checkpoints.write_manifest(Path(args.out))
        print(f"wrote {path} ({len(_checkpoints.read_manifest(Path(args.out)))} files)")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [*RECIPES, *GENERATOR_RECIPES] if args.all else args.model
    t0 = time.perf_counter()
    rows, gen_rows = [], []
    for name in names:
        if name in GENERATOR_RECIPES:
            print(f"training {name} (VAE decoder) on the {GENERATOR_RECIPES[name].split!r} split")
            _, meta = train_generator(name, out_dir=args.out)
            gen_rows.append((name, meta))
            continue
        print(f"training {name} on the {RECIPES[name].split!r} split")
        _, meta = train_model(name, out_dir=args.out)
        rows.append((name, meta["accuracy"], meta["train_seconds"]))
    if rows:
        print(f"\naccuracy on fresh data (seed {EVAL_SEED}, 2000 images per split)")
        print(f"{'model':<18}" + "".join(f"{s:>10}" for s in SPLITS) + f"{'seconds':>10}")
    for name, acc, secs in rows:
        print(f"{name:<18}" + "".join(f"{acc[s]:>10.3f}" for s in SPLITS) + f"{secs:>10.0f}")
    for name, meta in gen_rows:
        print(f"{name}: reconstruction MSE per pixel {meta['recon_mse_per_pixel']:.4f}, KL {meta['kl']:.1f} nats, "
              f"{meta['train_seconds']:.0f} s")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
