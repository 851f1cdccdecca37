"""The companion's models: a registry, the bundled lesion models, the ImageNet models.

``load(name)`` is the one entry point. Every model it returns

* is in eval mode and takes ImageNet-normalised input (:func:`chapter6_utils.data.normalize`),
* carries ``model.ch6``, a :class:`ModelInfo` saying what it is and where its weights came
  from: ``"bundled"`` (trained by ``python -m chapter6_utils.train``, shipped in
  ``chapter6_utils/weights/``), ``"imagenet"`` (downloaded or cached pretrained weights) or
  ``"random"`` (no weights could be had: the notice says why, and maps of such a model
  show what an untrained network does, not what a trained one sees).

Offline, ``pretrained="auto"`` never waits on the network: caches on disk are used when
present without any network call, one short probe per process
(:func:`chapter6_utils._net.online`) decides the rest, and neither torch hub nor the
Hugging Face hub is ever asked to download (they retry for a minute). Every weight file
is checked against its published hash and loaded without running code
(:mod:`chapter6_utils._checkpoints`): bundled weights against ``weights/SHA256SUMS``,
torchvision's against the hash prefix in their names, the hub's against their ETag.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock

from . import _checkpoints, _checks, _net
from .data import IMAGENET_MEAN, IMAGENET_STD, imagenet_classes
from .synthetic import CLASSES as LESION_CLASSES, IMAGE_SIZE as LESION_SIZE

__all__ = ["ModelInfo", "load", "available", "build", "weights_path", "LesionCNN", "LesionResNet",
           "LesionGenerator", "lesion_vit_architecture", "WEIGHTS_DIR"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass
class ModelInfo:
    """What ``model.ch6`` holds: where a model loaded by :func:`load` came from.

    Attributes
    ----------
    name : str
        The name :func:`load` was given.
    classes : tuple of str or None
        The class names by index; None for a feature extractor (DINO has no classifier).
    input_size : int
        The side S of the (N, 3, S, S) input it was trained on.
    weights : {"bundled", "imagenet", "random"}
    notice : str or None
        The one-line notice printed when it fell back to random weights.
    description : str
    extra : dict
        The training metadata of bundled weights (recipe, accuracy per split).
    """

    name: str
    classes: Optional[tuple]  # None for a feature extractor (DINO has no classifier)
    input_size: int
    weights: str  # "bundled", "imagenet" or "random"
    notice: Optional[str] = None
    description: str = ""
    extra: dict = field(default_factory=dict)  # training metadata of bundled weights
    #: True when the network takes only ``input_size`` x ``input_size`` images (a linear head
    #: after fixed pooling, a fixed patch grid): methods then refuse other sizes by name.
    fixed_size: bool = False


# --------------------------------------------------------------------------- architectures
class LesionCNN(nn.Module):
    """VGG-style CNN for 64x64 lesion images: 3x3 convolutions with ``nn.ReLU`` modules,
    ``nn.MaxPool2d``, no BatchNorm, a small linear head.

    Laid out like torchvision's VGG (``features``, ``classifier``) so that Zeiler-Fergus
    projection, LRP and the libraries' VGG canonizers see a familiar shape. Each ReLU is its
    own (non-inplace) module, used once: backward hooks and LRP rules can then be attached
    per layer without surprises.

    Input (N, 3, 64, 64), ImageNet-normalised; output (N, 2) logits.
    """

    def __init__(self, num_classes: int = 2, widths=(16, 32, 64, 64)):
        super().__init__()
        w1, w2, w3, w4 = widths
        self.features = nn.Sequential(
            nn.Conv2d(3, w1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w1, w1, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),                                 # 32x32
            nn.Conv2d(w1, w2, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w2, w2, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),                                 # 16x16
            nn.Conv2d(w2, w3, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),                                 # 8x8
            nn.Conv2d(w3, w4, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),                                 # 4x4
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(w4 * 4 * 4, 64), nn.ReLU(),
            nn.Linear(64, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class LesionResNet(nn.Module):
    """A small ResNet for 64x64 lesion images, built from torchvision's ``BasicBlock``.

    BatchNorm, identity skips and a 1x1 projection where the shape changes, so that it
    poses exactly the problems ResNet-18 poses to LRP (residual sums, BatchNorm) at a
    fraction of the cost. Attribute names follow torchvision's ResNet.

    Input (N, 3, 64, 64), ImageNet-normalised; output (N, 2) logits.
    """

    def __init__(self, num_classes: int = 2, widths=(16, 32, 64)):
        super().__init__()
        w1, w2, w3 = widths
        self.conv1 = nn.Conv2d(3, w1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w1)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)                       # 32x32
        self.layer1 = nn.Sequential(BasicBlock(w1, w1))
        self.layer2 = nn.Sequential(BasicBlock(w1, w2, stride=2, downsample=self._down(w1, w2)))  # 16
        self.layer3 = nn.Sequential(BasicBlock(w2, w3, stride=2, downsample=self._down(w2, w3)))  # 8
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w3, num_classes)

    @staticmethod
    def _down(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=2, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def lesion_vit_architecture(num_classes: int = 2):
    """A timm ``VisionTransformer`` for 64x64 input.

    8x8 patches (64 tokens and CLS), 6 blocks of 4 heads, width 96; logits from the CLS
    token.

    Parameters
    ----------
    num_classes : int, default 2

    Returns
    -------
    timm.models.vision_transformer.VisionTransformer
        Randomly initialised; input (N, 3, 64, 64), output (N, num_classes).
    """
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=LESION_SIZE, patch_size=8, num_classes=num_classes,
                             embed_dim=96, depth=6, num_heads=4, mlp_ratio=2.0,
                             class_token=True, global_pool="token")


class LesionGenerator(nn.Module):
    """A DCGAN-shaped image generator for the lesion world: latent code z -> lesion image.

    It is the decoder of a variational autoencoder trained on lesion images (skin, hair,
    lesion, ruler; ``python -m chapter6_utils.train --model lesion_generator``), so codes
    drawn from the standard normal prior decode to plausible lesion images. DGN-AM
    (:func:`chapter6_utils.actmax.dgn_am`, equation 11 (book/equations.md); Nguyen et al.,
    2016) searches this latent space.

    Input (N, latent_dim) codes; output (N, 3, 64, 64) images in [0, 1], *not*
    ImageNet-normalised (normalise before feeding a classifier).
    """

    def __init__(self, latent_dim: int = 64, widths=(128, 64, 32, 16)):
        super().__init__()
        self.latent_dim = latent_dim
        self._w0 = widths[0]
        self.fc = nn.Linear(latent_dim, widths[0] * 4 * 4)
        layers = []
        for cin, cout in zip(widths[:-1], widths[1:]):  # 4 -> 8 -> 16 -> 32
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1), nn.BatchNorm2d(cout), nn.ReLU()]
        layers += [nn.ConvTranspose2d(widths[-1], 3, 4, 2, 1), nn.Sigmoid()]  # 64x64 in [0, 1]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"latent codes must have shape (N, {self.latent_dim}), got {tuple(z.shape)}")
        return self.net(self.fc(z).view(-1, self._w0, 4, 4))

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """Images decoded from prior codes z ~ N(0, I).

        Parameters
        ----------
        n : int
            Number of images, >= 1.
        seed : int, default 0
            The codes' seed.

        Returns
        -------
        torch.Tensor
            (n, 3, 64, 64) in [0, 1], on the generator's device.
        """
        n, seed = _checks.integer(n, "n", low=1, hint="images to draw"), _checks.seed(seed)
        dev = self.fc.weight.device
        z = torch.randn(n, self.latent_dim, generator=torch.Generator().manual_seed(seed)).to(dev)
        with torch.no_grad():
            return self(z)


# --------------------------------------------------------------------------- registry
@dataclass
class _Spec:
    build: Callable[[], nn.Module]
    kind: str  # "bundled" or "imagenet"
    input_size: int
    description: str
    classes: Callable[[], Optional[tuple]]
    fetch: Optional[Callable[[nn.Module], None]] = None  # loads pretrained ImageNet weights


def _lesion_classes():
    return LESION_CLASSES


def _imagenet():
    return tuple(imagenet_classes())


def _torchvision(arch, weights_enum):
    import torchvision

    def build():
        return getattr(torchvision.models, arch)(weights=None)

    def fetch(model):
        # The published URL is read now, from torchvision: its name carries the hash prefix.
        weights = getattr(torchvision.models, weights_enum).IMAGENET1K_V1
        size = weights.meta.get("_file_size")  # MB, as torchvision publishes it
        model.load_state_dict(_checkpoints.torch_hub_state_dict(
            weights.url, f"{arch} ImageNet weights", size=int(size * 1e6) if size else None))

    return build, fetch


def _timm(arch):
    # timm is only ever asked to build a model or read a local file: with the hub's
    # offline flag raised around both, no timm version can start a download or a retry.
    def build():
        import timm

        with _checkpoints.hub_offline():
            return timm.create_model(arch, pretrained=False)

    def fetch(model):
        import timm

        cfg = timm.models.get_pretrained_cfg(arch)
        path = _checkpoints.hub_file(cfg.hf_hub_id, "model.safetensors", what=f"{arch} weights ({cfg.hf_hub_id})")
        # timm loads the local safetensors file (no pickle) with its own key filters.
        with _checkpoints.hub_offline():
            loaded = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
        model.load_state_dict(loaded.state_dict())

    return build, fetch


def _imagenet_spec(build, fetch, description, classes=_imagenet):
    return _Spec(build, "imagenet", 224, description, classes, fetch)


_REGISTRY: dict[str, _Spec] = {
    "lesion_cnn": _Spec(LesionCNN, "bundled", LESION_SIZE,
                        "VGG-style CNN trained on the biased lesion split (takes the ruler shortcut)",
                        _lesion_classes),
    "lesion_cnn_clean": _Spec(LesionCNN, "bundled", LESION_SIZE,
                              "the same CNN trained on the unbiased split (ruler carries no label information)",
                              _lesion_classes),
    "lesion_resnet": _Spec(LesionResNet, "bundled", LESION_SIZE,
                           "small ResNet (BasicBlocks, BatchNorm) trained on the biased split",
                           _lesion_classes),
    "lesion_vit": _Spec(lesion_vit_architecture, "bundled", LESION_SIZE,
                        "ViT, patch 8, 6 blocks x 4 heads, trained on the biased split",
                        _lesion_classes),
    "lesion_vit_seed2": _Spec(lesion_vit_architecture, "bundled", LESION_SIZE,
                              "lesion_vit's architecture and recipe, another training seed",
                              _lesion_classes),
    "lesion_cnn_shuffled": _Spec(LesionCNN, "bundled", LESION_SIZE,
                                 "the same CNN trained to memorise 256 images with permuted labels "
                                 "(data randomisation test; at chance on new images)", _lesion_classes),
    "lesion_generator": _Spec(LesionGenerator, "bundled", LESION_SIZE,
                              "VAE decoder: latent (N, 64) -> lesion images (N, 3, 64, 64) in [0, 1]",
                              lambda: None),
    "resnet18": _imagenet_spec(*_torchvision("resnet18", "ResNet18_Weights"),
                               "torchvision ResNet-18, ImageNet-1k"),
    "vgg16": _imagenet_spec(*_torchvision("vgg16", "VGG16_Weights"), "torchvision VGG-16, ImageNet-1k"),
    "vit_small_patch16_224": _imagenet_spec(*_timm("vit_small_patch16_224"),
                                            "timm ViT-S/16 (AugReg, ImageNet-21k then 1k)"),
    "vit_small_patch8_224.dino": _imagenet_spec(*_timm("vit_small_patch8_224.dino"),
                                                "timm DINO ViT-S/8 (self-supervised, no classifier head)",
                                                classes=lambda: None),
}


def available() -> list[str]:
    """The names :func:`load` accepts.

    Returns
    -------
    list of str
    """
    return list(_REGISTRY)


def _spec(name: str) -> _Spec:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(available())}")
    return _REGISTRY[name]


def build(name: str) -> nn.Module:
    """The architecture of ``name`` with freshly initialised (random) weights, in train mode.

    Parameters
    ----------
    name : str
        One of :func:`available`.

    Returns
    -------
    torch.nn.Module

    Raises
    ------
    ValueError
        For an unknown name.
    """
    return _spec(name).build()


def weights_path(name: str, weights_dir: Path | None = None) -> Path:
    """Where the bundled weights of ``name`` live (their SHA-256 is in ``SHA256SUMS`` beside them).

    Parameters
    ----------
    name : str
    weights_dir : pathlib.Path, optional
        Default: the package's ``weights/``.

    Returns
    -------
    pathlib.Path
        ``<weights_dir>/<name>.pt`` (whether or not it exists).
    """
    return Path(weights_dir or WEIGHTS_DIR).expanduser() / f"{name}.pt"


def _fold_input_normalisation(model: nn.Module, name: str) -> None:
    """Make a timm ViT whose weights expect other normalisation take ImageNet-normalised input.

    The patch embedding is a convolution with stride = kernel and no padding, so a
    per-channel affine change of its input (x_own = a * x_imagenet + b) can be folded
    exactly into its weights and bias: the model class (and so ``model.blocks``) stays
    timm's own, unlike a wrapper.
    """
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    mean, std = torch.tensor(cfg.mean), torch.tensor(cfg.std)
    mean_in, std_in = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    if torch.allclose(mean, mean_in) and torch.allclose(std, std_in):
        return
    a, b = std_in / std, (mean_in - mean) / std  # x_own = a * x + b, per channel
    proj = model.patch_embed.proj
    with torch.no_grad():
        if proj.bias is not None:
            proj.bias += (proj.weight * b.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
        proj.weight *= a.view(1, -1, 1, 1)


def load(name: str, pretrained="auto", device=None, weights_dir: str | os.PathLike | None = None) -> nn.Module:
    """Load a model by name, in eval mode, with ``model.ch6`` metadata (:class:`ModelInfo`).

    Parameters
    ----------
    name : str
        One of :func:`available`.
    pretrained : {"auto", True, False}, default "auto"
        ``"auto"``: trained weights when they can be had, else random weights and a
        one-line notice; ``True``: trained weights or an error; ``False``: random weights,
        no notice.
    device : torch.device or str, optional
        Where to put the model (default: the CPU; see :func:`chapter6_utils.device`).
    weights_dir : str or os.PathLike, optional
        Folder of bundled weights and their ``SHA256SUMS`` (default: the package's
        ``weights/``; ``python -m chapter6_utils.train --out DIR`` writes both).

    Returns
    -------
    torch.nn.Module
        In eval mode, taking ImageNet-normalised (N, 3, S, S) input with S =
        ``model.ch6.input_size``. The exception is ``"lesion_generator"``: it takes latent
        codes (N, ``model.latent_dim``) and returns (N, 3, S, S) images in [0, 1].

    Raises
    ------
    ValueError
        For an unknown ``name``, or a ``pretrained`` other than "auto", True, False.
    NotADirectoryError
        For a ``weights_dir`` that does not exist.
    RuntimeError
        With ``pretrained=True`` and no trained weights: missing, empty, damaged (SHA-256
        differs from the manifest or the published hash), offline, or refused by
        ``torch.load(weights_only=True)``. With "auto" the same causes give random weights
        and a one-line notice naming the cause, the file and how to restore it.
    """
    spec = _spec(name)
    if not (isinstance(pretrained, str) and pretrained == "auto") and pretrained is not True \
            and pretrained is not False:
        raise ValueError(f"pretrained must be 'auto', True or False, got {pretrained!r} "
                         f"({type(pretrained).__name__}); True demands trained weights or an error, "
                         "False gives random weights, 'auto' falls back to random weights with a notice")
    if weights_dir is not None and not Path(weights_dir).expanduser().is_dir():
        raise NotADirectoryError(f"weights_dir {str(weights_dir)!r} does not exist or is not a folder; pass the "
                                 "folder that holds <name>.pt and SHA256SUMS, or omit it for the bundled weights")
    model = spec.build()
    source, notice, extra = "random", None, {}
    if pretrained is not False:
        try:
            if spec.kind == "bundled":
                # checked against weights/SHA256SUMS first: a damaged file is never loaded
                ckpt = _checkpoints.load_bundled(weights_path(name, weights_dir), name)
                model.load_state_dict(ckpt["state_dict"])
                extra = ckpt.get("meta", {})
                source = "bundled"
            else:
                spec.fetch(model)
                source = "imagenet"
        except Exception as err:  # noqa: BLE001 -- any failure means: no trained weights
            if pretrained is True:
                raise RuntimeError(f"could not load trained weights for {name!r}: {err}") from err
            notice = (f"{name}: RANDOM weights ({type(err).__name__}: {err}); "
                      "its maps show an untrained network, not what a trained one sees.")
            _net.notice(notice)
    if name.startswith("vit_"):
        _fold_input_normalisation(model, name)
    model.eval()
    model.ch6 = ModelInfo(name=name, classes=spec.classes(), input_size=spec.input_size,
                          weights=source, notice=notice, description=spec.description, extra=extra,
                          fixed_size=spec.kind == "bundled" or name.startswith("vit_"))
    return model.to(device) if device is not None else model
