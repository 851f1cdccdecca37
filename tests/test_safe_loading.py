"""Safe loads: the bundled weights' SHA-256 manifest, pickles that would run code, cached
ImageNet weights loaded with no network at all, the hub's offline flag kept to our call,
and clear errors for a bad ``weights_dir`` or ``pretrained``."""
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import torchvision

from chapter6_utils import _checkpoints, _net, models, train

BUNDLED = sorted(p.stem for p in models.WEIGHTS_DIR.glob("*.pt"))


def test_shipped_manifest_lists_every_bundled_file_with_its_hash():
    manifest = _checkpoints.read_manifest(models.WEIGHTS_DIR)
    assert sorted(manifest) == sorted(f"{n}.pt" for n in BUNDLED) and len(BUNDLED) >= 7
    for name, digest in manifest.items():
        assert _checkpoints.sha256(models.WEIGHTS_DIR / name) == digest, name


@pytest.fixture
def weights_copy(tmp_path):
    """A temporary copy of the bundled weights folder, manifest included."""
    return Path(shutil.copytree(models.WEIGHTS_DIR, tmp_path / "weights"))


@pytest.mark.parametrize("damage", ["empty", "truncated", "one byte changed", "not in the manifest"])
def test_damaged_bundled_weights_are_never_loaded_as_bundled(weights_copy, capsys, damage):
    path = weights_copy / "lesion_cnn.pt"
    raw = path.read_bytes()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "one byte changed":
        path.write_bytes(raw[:1000] + bytes([raw[1000] ^ 1]) + raw[1001:])
    else:
        (weights_copy / "SHA256SUMS").write_text("".join(
            line + "\n" for line in (weights_copy / "SHA256SUMS").read_text().splitlines()
            if "lesion_cnn.pt" not in line))
    m = models.load("lesion_cnn", weights_dir=weights_copy)
    assert m.ch6.weights == "random"
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and str(path) in out  # one line, naming the file...
    assert "pip install --force-reinstall chapter6-utils" in out  # ...and both ways to restore it
    assert f"python -m chapter6_utils.train --model lesion_cnn --out {weights_copy}" in out
    assert {"empty": "empty file", "truncated": "damaged", "one byte changed": "damaged",
            "not in the manifest": "not listed"}[damage] in out
    with pytest.raises(RuntimeError, match="could not load trained weights for 'lesion_cnn'"):
        models.load("lesion_cnn", weights_dir=weights_copy, pretrained=True)
    # the neighbours in the folder are untouched and still load as bundled
    assert models.load("lesion_cnn_clean", weights_dir=weights_copy).ch6.weights == "bundled"


class _RunsCode:
    """Unpickling this calls a function: a stand-in for a crafted checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('the pickle ran')",))


def _crafted(path: Path, fmt: str) -> Path:
    payload = {"state_dict": {"w": torch.zeros(2)}, "meta": _RunsCode(path.with_suffix(".ran"))}
    if fmt == "torch zip":
        torch.save(payload, path)
    elif fmt == "torch legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(payload))
    return path


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("fmt", ["torch zip", "torch legacy", "plain pickle"])
def test_crafted_pickle_is_refused_and_its_code_never_runs(tmp_path, fmt):
    path = _crafted(tmp_path / "evil.pt", fmt)
    with pytest.raises(_checkpoints.DamagedWeights, match="not a plain weights file"):
        _checkpoints.safe_torch_load(path, "test weights")
    assert not path.with_suffix(".ran").exists()
    # control: an unsafe load of the same file does run its code, so the file is a real threat
    torch.load(path, weights_only=False) if fmt != "plain pickle" else pickle.loads(path.read_bytes())
    assert path.with_suffix(".ran").read_text() == "the pickle ran"


def test_crafted_bundled_file_with_a_matching_manifest_is_still_refused(weights_copy, capsys):
    """Even when the manifest was rewritten to match, unpickling refuses to call code."""
    path = _crafted(weights_copy / "lesion_cnn.pt", "torch zip")
    _checkpoints.write_manifest(weights_copy, ["lesion_cnn.pt"])
    assert models.load("lesion_cnn", weights_dir=weights_copy).ch6.weights == "random"
    assert "not a plain weights file" in capsys.readouterr().out
    assert not path.with_suffix(".ran").exists()


def _publish_as_resnet18(monkeypatch, path: Path) -> Path:
    """Point torchvision's published ResNet-18 URL at ``path``'s name (its hash prefix) and
    put the file in torch hub's cache, as if downloaded before."""
    name = f"resnet18-{_checkpoints.sha256(path)[:8]}.pth"
    monkeypatch.setattr(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.value, "url",
                        f"https://download.pytorch.org/models/{name}")
    cached = Path(torch.hub.get_dir()) / "checkpoints" / name
    cached.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, cached)
    return cached


def test_crafted_torch_hub_cache_file_is_refused(isolated_net, monkeypatch, tmp_path):
    """A crafted file in torch hub's cache under a name whose hash prefix it matches."""
    monkeypatch.setenv("CHAPTER6_OFFLINE", "1")
    evil = _crafted(tmp_path / "evil.pth", "torch zip")
    cached = _publish_as_resnet18(monkeypatch, evil)
    with pytest.raises(RuntimeError, match="not a plain weights file"):
        models.load("resnet18", pretrained=True)
    assert not evil.with_suffix(".ran").exists() and not cached.with_suffix(".ran").exists()


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """Random-valued ResNet-18 and ViT-S/16 weight files in the formats their hosts publish."""
    import safetensors.torch

    folder = tmp_path_factory.mktemp("published")
    torch.manual_seed(0)
    resnet = folder / "resnet18.pth"
    torch.save(models.build("resnet18").state_dict(), resnet)
    vit = folder / "model.safetensors"
    vit_state = models.build("vit_small_patch16_224").state_dict()
    safetensors.torch.save_file({k: v.contiguous() for k, v in vit_state.items()}, str(vit), metadata={"format": "pt"})
    return {"resnet18": resnet, "vit": vit}


def _as_hub_cache(root: Path, repo_id: str, source: Path) -> None:
    """``source`` placed in the hub cache layout, as huggingface_hub leaves a download."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    sha, commit = _checkpoints.sha256(source), "c" * 40
    (repo / "blobs").mkdir(parents=True)
    shutil.copyfile(source, repo / "blobs" / sha)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "model.safetensors").symlink_to(f"../../blobs/{sha}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_cached_imagenet_weights_load_without_touching_the_network(isolated_net, monkeypatch, published, no_network):
    """With cached weights and *no* offline flag, loading makes no connection and no name
    lookup (the fake resolver would hang): nothing is probed, the hub is never asked, and
    neither os.environ nor the hub's own offline setting is changed."""
    import timm
    from huggingface_hub import constants

    _publish_as_resnet18(monkeypatch, published["resnet18"])
    _as_hub_cache(isolated_net["hf"], timm.models.get_pretrained_cfg("vit_small_patch16_224").hf_hub_id,
                  published["vit"])
    env_before, flag_before = dict(os.environ), constants.HF_HUB_OFFLINE
    resnet = models.load("resnet18", pretrained=True)
    vit = models.load("vit_small_patch16_224", pretrained=True)
    assert no_network == []
    assert resnet.ch6.weights == "imagenet" and vit.ch6.weights == "imagenet"
    assert dict(os.environ) == env_before and constants.HF_HUB_OFFLINE == flag_before
    expected = torch.load(published["resnet18"], weights_only=True)
    assert all(torch.equal(v, expected[k]) for k, v in resnet.state_dict().items())
    assert resnet.ch6.classes[258] == "Samoyed"


def test_offline_without_caches_never_touches_the_network(isolated_net, monkeypatch, capsys, no_network):
    """Offline with empty caches: all four ImageNet models come back with random weights and
    one notice each, without a single connection attempt or name lookup."""
    monkeypatch.setenv("CHAPTER6_OFFLINE", "1")
    names = ["resnet18", "vgg16", "vit_small_patch16_224", "vit_small_patch8_224.dino"]
    loaded = {name: models.load(name) for name in names}
    assert no_network == []
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    for name, m in loaded.items():
        assert m.ch6.weights == "random" and name in m.ch6.notice and "offline" in m.ch6.notice
        assert any(name in line and "RANDOM" in line for line in lines)
        assert not m.training
    assert loaded["resnet18"].ch6.classes[258] == "Samoyed"
    assert loaded["vit_small_patch8_224.dino"].ch6.classes is None


@pytest.mark.parametrize("user_setting", [None, "1"])
def test_hub_offline_flag_is_scoped_to_our_call(monkeypatch, user_setting):
    from huggingface_hub import constants, is_offline_mode

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", user_setting == "1")
    env_before = dict(os.environ)
    with _checkpoints.hub_offline():
        assert is_offline_mode() is True
    assert is_offline_mode() is (user_setting == "1") and dict(os.environ) == env_before
    with pytest.raises(KeyError):  # restored even when the block raises
        with _checkpoints.hub_offline():
            raise KeyError("boom")
    assert is_offline_mode() is (user_setting == "1")


def test_weights_dir_that_does_not_exist_is_a_clear_error(tmp_path):
    with pytest.raises(NotADirectoryError, match="weights_dir .*nope.* does not exist"):
        models.load("lesion_cnn", weights_dir=tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        models.load("lesion_cnn", weights_dir=tmp_path / "file")


@pytest.mark.parametrize("value", ["yes", "True", None, 1, "pretrained", "AUTO"])
def test_wrong_pretrained_value_is_a_clear_error(value):
    with pytest.raises(ValueError, match=r"pretrained must be 'auto', True or False, got .*True demands"):
        models.load("lesion_cnn", pretrained=value)


def test_train_writes_the_manifest_and_the_cli_rewrites_it(tmp_path, capsys):
    net = models.build("lesion_cnn")
    train._save("lesion_cnn", net, {"note": "test"}, tmp_path, log=lambda m: None)
    assert _checkpoints.read_manifest(tmp_path) == {"lesion_cnn.pt": _checkpoints.sha256(tmp_path / "lesion_cnn.pt")}
    assert models.load("lesion_cnn", weights_dir=tmp_path, pretrained=True).ch6.weights == "bundled"
    shutil.copyfile(tmp_path / "lesion_cnn.pt", tmp_path / "lesion_cnn_clean.pt")  # copied by hand: unlisted
    with pytest.raises(RuntimeError, match="not listed"):
        models.load("lesion_cnn_clean", weights_dir=tmp_path, pretrained=True)
    assert train.main(["--manifest", "--out", str(tmp_path)]) == 0
    assert "2 files" in capsys.readouterr().out
    assert models.load("lesion_cnn_clean", weights_dir=tmp_path, pretrained=True).ch6.weights == "bundled"


def test_net_notice_once_is_said_once(capsys):
    _net._reset()
    _net.notice("same thing", once=True)
    _net.notice("same thing", once=True)
    assert capsys.readouterr().out == "[chapter6_utils] same thing\n"
    _net._reset()
