"""Downloads and caches against local stand-in hosts (scripts/fake_hosts.py on 127.0.0.1).

Every class of fault the issue names: a truncated body, a stalled server, a trickle that
beats any per-read timeout, a body beyond the size cap, a server that announces too much,
an HTTP error, a hanging resolver; a corrupt cache file (not an image, truncated, wrong
hash) that must be reported and replaced; a file that fails its published hash; a
read-only cache folder. No test times anything: a deadline shows itself by the error it
raises while the server would still be sending.
"""
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image

from chapter6_utils import _checkpoints, _net, data

BODY = bytes(range(256)) * 400  # 102,400 bytes


def _leftovers(folder: Path) -> list:
    # wait for download workers the test abandoned (each wakes within its read timeout)
    for t in threading.enumerate():
        if t.name == "chapter6_utils-download":
            t.join(120)
    return sorted(p.name for p in folder.glob(".*.part"))


# --------------------------------------------------------------------------- _net.download
def test_whole_body_is_renamed_into_place(hosts, tmp_path):
    url = hosts.add("files/a.bin", BODY)
    dest = _net.download(url, tmp_path / "a.bin")
    assert dest.read_bytes() == BODY and _leftovers(tmp_path) == []


@pytest.mark.parametrize("behaviour, kwargs, match", [
    ("truncate", {}, "broke off after|got 51,200 bytes, Content-Length announced 102,400"),
    # a stalled server is refused by the deadline; on a machine too busy to wake the
    # waiting thread on time, the socket's own timeout may speak first: both refuse it
    ("stall", {"deadline": 1.0}, "deadline|broke off after 0 of"),
    # one byte every 50 ms: a per-read timeout never fires, only a total deadline does
    ("trickle", {"deadline": 1.0, "read_timeout": 5.0}, "deadline"),
    ("overlong", {"max_bytes": 100_000}, "exceeds the 100,000-byte cap"),
    ("huge_length", {"max_bytes": 100_000}, "announces 10,000,000,000 bytes, more than the 100,000-byte cap"),
])
def test_faulty_server_is_refused_and_nothing_is_cached(hosts, tmp_path, behaviour, kwargs, match):
    url = hosts.add("files/b.bin", BODY, behaviour=behaviour)
    dest = tmp_path / "b.bin"
    with pytest.raises(_net.DownloadError, match=match):
        _net.download(url, dest, **kwargs)
    assert not dest.exists()
    assert _leftovers(tmp_path) == []


def test_http_error_is_a_download_error(hosts, tmp_path):
    with pytest.raises(_net.DownloadError, match="404"):
        _net.download(hosts.url + "/nowhere/c.bin", tmp_path / "c.bin")
    assert not (tmp_path / "c.bin").exists()


def test_publisher_size_that_disagrees_is_refused(hosts, tmp_path):
    url = hosts.add("files/d.bin", BODY)
    with pytest.raises(_net.DownloadError, match="the publisher announced 102,401"):
        _net.download(url, tmp_path / "d.bin", expected_size=len(BODY) + 1)
    assert not (tmp_path / "d.bin").exists()


def test_hanging_resolver_cannot_outlast_the_deadline(no_network, tmp_path):
    """getaddrinfo ignores socket timeouts; the download gives up while it still hangs
    (the fake resolver returns only when the test ends)."""
    with pytest.raises(_net.DownloadError, match="deadline"):
        _net.download("http://example.invalid/e.bin", tmp_path / "e.bin", deadline=0.5)
    for _ in range(600):  # the worker may reach the resolver only now on a busy machine
        if no_network:
            break
        threading.Event().wait(0.1)
    assert no_network == [("getaddrinfo", "example.invalid")]


# --------------------------------------------------------------------------- cached files
@pytest.mark.parametrize("damage", [b"<html>not an image</html>", b"", "truncated"])
def test_corrupt_cached_photo_is_reported_once_and_replaced(hosts, fh, capsys, damage):
    good = fh.photo_jpeg(Path(tempfile.mkdtemp()) / "dog.jpg")
    url = hosts.add_photo(good)
    cached = _net.cache_path_for(url)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(good.read_bytes()[:2000] if damage == "truncated" else damage)
    img = data.load_image(url)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "damaged" in lines[0] and str(cached) in lines[0] and "removed it" in lines[0]
    assert img.size == Image.open(good).size and cached.read_bytes() == good.read_bytes()
    data.load_image(url)  # now from the cache: no notice, no second download
    assert capsys.readouterr().out == ""
    assert hosts.gets("raw.githubusercontent.com") == 1


def test_samoyed_short_download_falls_back_and_caches_nothing(hosts, fh, capsys):
    good = fh.photo_jpeg(Path(tempfile.mkdtemp()) / "dog.jpg")
    hosts.add_photo(good)
    hosts.add("raw.githubusercontent.com/pytorch/hub/master/images/dog.jpg", good, behaviour="truncate")
    img = data.samoyed()
    assert "chelsea" in img.info["source"]
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "could not download the Samoyed photo" in out and "DownloadError" in out
    assert not _net.cache_path_for(data.SAMOYED_URL).exists()
    assert hosts.gets("raw.githubusercontent.com") == 1


def _tiny_checkpoint(folder: Path, value=1.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "tiny.tmp"
    torch.save({"w": torch.full((3,), value)}, tmp)
    path = folder / f"tiny-{_checkpoints.sha256(tmp)[:8]}.pth"
    os.replace(tmp, path)
    return path


def test_cached_checkpoint_with_a_wrong_hash_is_replaced(hosts, isolated_net, capsys):
    good = _tiny_checkpoint(Path(tempfile.mkdtemp()))
    url = hosts.add_torch_checkpoint(good)
    cached = isolated_net["torch"] / "hub" / "checkpoints" / good.name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(_tiny_checkpoint(Path(tempfile.mkdtemp()), value=2.0).read_bytes())  # other weights
    state = _checkpoints.torch_hub_state_dict(url, "tiny weights")
    assert torch.equal(state["w"], torch.ones(3))
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "damaged" in out and f"the published name says {good.name[5:13]}" in out
    assert cached.read_bytes() == good.read_bytes()


def test_download_that_fails_the_published_hash_is_not_cached(hosts, isolated_net):
    good = _tiny_checkpoint(Path(tempfile.mkdtemp()))
    other = _tiny_checkpoint(Path(tempfile.mkdtemp()), value=3.0)
    hosts.add(f"download.pytorch.org/models/{good.name}", other)  # right name, wrong bytes
    with pytest.raises(_net.DownloadError, match="failed its check.*published name says"):
        _checkpoints.torch_hub_state_dict(f"https://download.pytorch.org/models/{good.name}", "tiny weights")
    assert not any((isolated_net["torch"] / "hub" / "checkpoints").iterdir())


def test_checkpoint_url_without_a_hash_is_refused(isolated_net):
    with pytest.raises(ValueError, match="no hash prefix"):
        _checkpoints.torch_hub_state_dict("https://example.org/weights.pth", "weights")


def _tiny_repo(folder: Path):
    import safetensors.torch

    folder.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({"w": torch.arange(1000.0)}, str(folder / "model.safetensors"),
                                metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps({"architecture": "tiny"}))
    return {"model.safetensors": folder / "model.safetensors", "config.json": folder / "config.json"}


def test_hub_download_is_checked_and_in_the_hub_layout(hosts, isolated_net, capsys):
    from huggingface_hub import try_to_load_from_cache

    files = _tiny_repo(Path(tempfile.mkdtemp()))
    commit = hosts.add_hub_repo("org/tiny", files)
    path = _checkpoints.hub_file("org/tiny")
    assert path.read_bytes() == files["model.safetensors"].read_bytes()
    assert path.parent.name == commit and path.resolve().name == _checkpoints.sha256(path)
    assert try_to_load_from_cache("org/tiny", "model.safetensors", cache_dir=isolated_net["hf"]) == str(path)
    # a blob truncated later is reported, removed and downloaded again
    blob = path.resolve()
    blob.write_bytes(blob.read_bytes()[:-100])
    again = _checkpoints.hub_file("org/tiny")
    assert again.read_bytes() == files["model.safetensors"].read_bytes()
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "damaged" in out and "truncated" in out
    assert hosts.gets("cdn-lfs.hf.co") == 2


def test_hub_body_shorter_than_announced_is_not_cached(hosts, fh, isolated_net):
    files = _tiny_repo(Path(tempfile.mkdtemp()))
    hosts.add_hub_repo("org/tiny", files)
    sha = fh.sha256(files["model.safetensors"])
    hosts.add(f"cdn-lfs.hf.co/repos/{sha[:2]}/{sha[2:4]}/{sha}", files["model.safetensors"], behaviour="truncate")
    with pytest.raises(_net.DownloadError, match="broke off|announced"):
        _checkpoints.hub_file("org/tiny")
    assert not list(isolated_net["hf"].rglob("model.safetensors")) and not list(isolated_net["hf"].rglob("blobs/*"))


def test_a_server_that_is_not_the_hub_is_refused(hosts, isolated_net):
    hosts.add("huggingface.co/org/plain/resolve/main/model.safetensors", b"0" * 100)  # no X-Repo-Commit
    with pytest.raises(_net.DownloadError, match="did not answer like the Hugging Face hub"):
        _checkpoints.hub_file("org/plain")


# --------------------------------------------------------------------------- read-only cache
READ_ONLY_CHILD = r"""
import json, sys
from chapter6_utils import _net, data
out = {}
out["cached"] = data.load_image(sys.argv[1]).size            # read from the read-only folder
out["fresh"] = data.load_image(sys.argv[2]).size             # downloaded to the fallback
out["damaged"] = data.load_image(sys.argv[3]).size           # damaged copy passed over
out["fresh_path"] = str(_net.fallback_dir("cache") / _net.cache_path_for(sys.argv[2]).name)
print("RESULT " + json.dumps(out))
"""


def test_read_only_cache_folder_is_read_and_downloads_fall_back(hosts, fh):
    """A cache folder the process cannot write: cached files are still used, new downloads
    go to a per-user temporary folder, and a damaged file there is passed over; each said
    in one line. As root (who writes anywhere) the child process drops that privilege."""
    base = Path(tempfile.mkdtemp(prefix="ch6-ro-"))
    try:
        _read_only_case(hosts, fh, base)
    finally:
        for p in base.rglob("*"):
            if p.is_dir():
                p.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


def _without_write_override():
    """In the child, before exec: give up root's power to write where the mode forbids it
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER leave the bounding set), so a
    0555 folder is read-only to it as it is to any user."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _read_only_case(hosts, fh, base: Path):
    base.chmod(0o755)
    ro, tmp = base / "ro-cache", base / "tmp"
    ro.mkdir()
    tmp.mkdir(mode=0o777)
    tmp.chmod(0o777)
    photos = {}
    for i, name in enumerate(["cached", "fresh", "damaged"]):
        path = fh.photo_jpeg(base / "src" / f"{name}.jpg", size=(40 + i, 30), seed=i)
        photos[name] = hosts.add(f"example.org/{name}.jpg", path).replace(hosts.url + "/", "https://")
    (ro / _net.cache_path_for(photos["cached"]).name).write_bytes((base / "src" / "cached.jpg").read_bytes())
    (ro / _net.cache_path_for(photos["damaged"]).name).write_bytes(b"garbage")
    for p in [base / "src", *ro.iterdir(), *(base / "src").iterdir()]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    ro.chmod(0o555)
    env = {**os.environ, "CHAPTER6_CACHE": str(ro), "CHAPTER6_MIRROR": hosts.url, "TMPDIR": str(tmp),
           "HOME": str(tmp)}
    try:
        proc = subprocess.run([sys.executable, "-c", READ_ONLY_CHILD, *photos.values()], capture_output=True,
                              text=True, env=env, timeout=600,
                              preexec_fn=_without_write_override if os.geteuid() == 0 else None)
    except subprocess.SubprocessError as err:
        pytest.skip(f"running as root and cannot drop CAP_DAC_OVERRIDE here ({err}); no read-only folder to test")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result["cached"] == [40, 30] and result["fresh"] == [41, 30] and result["damaged"] == [42, 30]
    notices = [line for line in proc.stdout.splitlines() if line.startswith("[chapter6_utils]")]
    assert len(notices) == 2, proc.stdout
    assert f"cannot write to {ro}" in notices[1] or f"cannot write to {ro}" in notices[0]
    assert any("damaged" in n and "passed over" in n for n in notices)
    assert Path(result["fresh_path"]).is_file() and sorted(os.listdir(ro)) == sorted(
        [_net.cache_path_for(photos["cached"]).name, _net.cache_path_for(photos["damaged"]).name])
    assert hosts.gets("example.org/cached.jpg") == 0  # the read-only cache was used as is
