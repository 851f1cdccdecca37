"""Safe loading of every weight file the package reads.

Three sources, one rule: a file is checked against a published hash before it is
used, and it is read without running code.

* Bundled weights (``chapter6_utils/weights/*.pt``): listed with their SHA-256 in
  ``weights/SHA256SUMS`` (``sha256sum -c`` reads it), written by ``train`` whenever it
  saves a model; :func:`check_bundled` refuses an empty, truncated or altered file and
  says how to restore it.
* torchvision's ImageNet weights: torch hub's convention, the first hex digits of the
  file's SHA-256 in its published name (``resnet18-f37072fd.pth``); downloaded into
  torch hub's own cache (``$TORCH_HOME/hub/checkpoints``), shared with torchvision.
* timm's weights on the Hugging Face hub: ``model.safetensors`` (no pickle at all),
  whose hub ETag is its SHA-256; kept in the hub's own cache layout (``$HF_HOME/hub``),
  so timm and ``huggingface_hub`` find what we downloaded and we find what they did.

Every ``torch.load`` here is ``weights_only=True``: a pickle that would call a function
is refused. Downloads go through :func:`chapter6_utils._net.fetch` and ``download``
(total deadline, size cap, length check, atomic rename). Imports only ``_net``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import threading
import urllib.parse
from pathlib import Path

import torch

from . import _net

MANIFEST = "SHA256SUMS"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HUB_LOCK = threading.Lock()
#: Weights download at 250 kB/s or better, or the total deadline stops them.
MIN_RATE = 250_000


class DamagedWeights(RuntimeError):
    """A weight file that is empty, truncated, altered or not a plain weights file."""


_DIGESTS: dict = {}  # (path, inode, size, mtime) -> sha256: each file is hashed once per process


def sha256(path: Path) -> str:
    """SHA-256 of a file, remembered while the file is unchanged (same size and mtime).

    Parameters
    ----------
    path : pathlib.Path

    Returns
    -------
    str
        64 hex digits.
    """
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def deadline_for(size: int) -> float:
    """Total download deadline for a file: 30 s plus its size at ``MIN_RATE``.

    Parameters
    ----------
    size : int
        Bytes.

    Returns
    -------
    float
        Seconds.
    """
    return 30.0 + size / MIN_RATE


def safe_torch_load(path: Path, what: str):
    """``torch.load(path, weights_only=True)`` onto the CPU: no code in the file runs.

    Parameters
    ----------
    path : pathlib.Path
    what : str
        What the file is, for the error message.

    Returns
    -------
    object
        The unpickled tensors and containers.

    Raises
    ------
    DamagedWeights
        If the pickle is refused (it needs more than weights) or unreadable.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError (refused global), RuntimeError (bad zip), EOFError
        raise DamagedWeights(f"{what} at {path} is not a plain weights file and was not loaded "
                             f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from err


# --------------------------------------------------------------------------- bundled weights
def read_manifest(folder: Path) -> dict[str, str]:
    """The hashes listed in ``<folder>/SHA256SUMS``.

    Parameters
    ----------
    folder : pathlib.Path

    Returns
    -------
    dict
        ``{file name: sha256}``; empty when there is no manifest.
    """
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return {}
    entries = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.strip().split()
        if len(parts) == 2 and _HEX64.fullmatch(parts[0]):
            entries[parts[1].lstrip("*")] = parts[0]
    return entries


def write_manifest(folder: Path, names=None) -> Path:
    """Record the SHA-256 of files in ``<folder>/SHA256SUMS``, keeping the other entries.

    Written atomically (a temporary file renamed into place).

    Parameters
    ----------
    folder : pathlib.Path
    names : sequence of str, optional
        File names in ``folder`` (default: every ``*.pt``).

    Returns
    -------
    pathlib.Path
        The manifest's path.
    """
    folder = Path(folder)
    entries = read_manifest(folder)
    names = sorted(p.name for p in folder.glob("*.pt")) if names is None else names
    for name in names:
        entries[name] = sha256(folder / name)
    entries = {n: h for n, h in entries.items() if (folder / n).is_file()}
    path = folder / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.{os.getpid()}.part")
    tmp.write_text("".join(f"{h}  {n}\n" for n, h in sorted(entries.items())), encoding="utf-8")
    os.replace(tmp, path)
    return path


def check_bundled(path: Path, name: str) -> None:
    """Raise unless ``path`` is the file its folder's manifest lists, byte for byte.

    Parameters
    ----------
    path : pathlib.Path
        A bundled ``<name>.pt``.
    name : str
        The model's name, for the messages.

    Raises
    ------
    FileNotFoundError
        If the folder or the file is missing.
    DamagedWeights
        If the file is empty, not in the manifest, or its SHA-256 differs. Each message
        names the file and the two ways to restore it.
    """
    path = Path(path)
    restore = (f"restore it by reinstalling the package (pip install --force-reinstall chapter6-utils) "
               f"or by retraining it: python -m chapter6_utils.train --model {name}"
               + (f" --out {path.parent}" if path.parent.resolve() != _default_weights_dir() else ""))
    if not path.parent.is_dir():
        raise FileNotFoundError(f"weights_dir {path.parent} does not exist (or is not a folder); "
                                "pass the folder that holds <name>.pt, or omit weights_dir for the bundled weights")
    if not path.is_file():
        raise FileNotFoundError(f"no bundled weights at {path}; {restore}")
    size = path.stat().st_size
    if size == 0:
        raise DamagedWeights(f"the bundled weights {path} are an empty file (0 bytes); {restore}")
    expected = read_manifest(path.parent).get(path.name)
    if expected is None:
        raise DamagedWeights(f"{path} is not listed in {path.parent / MANIFEST}, so it cannot be checked; "
                             f"{restore} (both write the manifest)")
    actual = sha256(path)
    if actual != expected:
        raise DamagedWeights(f"the bundled weights {path} are damaged ({size:,} bytes, SHA-256 {actual[:12]}..., "
                             f"the manifest says {expected[:12]}...); {restore}")


def _default_weights_dir() -> Path:
    return (Path(__file__).resolve().parent / "weights").resolve()


def load_bundled(path: Path, name: str) -> dict:
    """The checked, safely unpickled checkpoint at ``path``.

    Parameters
    ----------
    path : pathlib.Path
    name : str

    Returns
    -------
    dict
        ``{"state_dict": ..., "meta": ...}`` as :mod:`chapter6_utils.train` writes it.

    Raises
    ------
    FileNotFoundError, DamagedWeights
        As :func:`check_bundled`, or when the file holds no ``"state_dict"``.
    """
    check_bundled(path, name)
    ckpt = safe_torch_load(path, f"the bundled weights of {name!r}")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise DamagedWeights(f"{path} holds no 'state_dict'; it is not a checkpoint written by chapter6_utils.train")
    return ckpt


# --------------------------------------------------------------------------- torch hub
def torch_hub_state_dict(url: str, what: str, size: int | None = None) -> dict:
    """The state dict published at ``url``, checked against the hash in its name.

    torch hub's naming: ``<name>-<sha256 prefix>.<ext>``. Read from torch hub's cache
    (``$TORCH_HOME/hub/checkpoints``) when a copy there matches, else downloaded there; a
    mismatch in either is reported, removed and never loaded.

    Parameters
    ----------
    url : str
    what : str
        What the file is, for messages.
    size : int, optional
        The published size in bytes, for the download's deadline and cap.

    Returns
    -------
    dict
        The state dict, on the CPU.

    Raises
    ------
    ValueError
        If the name carries no hash prefix.
    ConnectionError
        Offline with no good copy, or when the download fails (:class:`chapter6_utils._net.DownloadError`).
    DamagedWeights
        If the file is not a state dict.
    """
    name = os.path.basename(urllib.parse.urlparse(url).path)
    match = torch.hub.HASH_REGEX.search(name)
    if not match or not match.group(1):
        raise ValueError(f"{url} carries no hash prefix in its name; refusing to load it unchecked")
    prefix = match.group(1)

    def check(path: Path) -> None:
        if path.stat().st_size == 0:
            raise DamagedWeights("empty file")
        digest = sha256(path)
        if not digest.startswith(prefix):
            raise DamagedWeights(f"its SHA-256 starts {digest[:len(prefix)]}, the published name says {prefix}")

    cap = int(size * 1.1) + (1 << 20) if size else 2_000_000_000
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = _net.fetch(url, folder / name, kind="torch-checkpoints", what=what, check=check,
                      deadline=deadline_for(size or cap), max_bytes=cap)
    state = safe_torch_load(path, what)
    if not isinstance(state, dict):
        raise DamagedWeights(f"{what} at {path} is not a state dict")
    return state


# --------------------------------------------------------------------------- Hugging Face hub
def hub_cache_dir() -> Path:
    """The Hugging Face hub's cache folder, read from the environment now.

    ``huggingface_hub`` reads it once, at import.

    Returns
    -------
    pathlib.Path
        ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``.
    """
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def hub_endpoint() -> str:
    """The Hugging Face hub's address, read now.

    Returns
    -------
    str
        ``$HF_ENDPOINT`` or https://huggingface.co, through the mirror when one is set.
    """
    return _net.via_mirror(os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/"))


def _repo_folder(root: Path, repo_id: str) -> Path:
    return Path(root) / ("models--" + repo_id.replace("/", "--"))


def _cached_hub_file(root: Path, repo_id: str, filename: str, revision: str) -> Path | None:
    repo = _repo_folder(root, repo_id)
    ref = repo / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    path = repo / "snapshots" / commit / filename
    return path if path.exists() or path.is_symlink() else None


def check_safetensors(path: Path) -> None:
    """Raise unless ``path`` is a whole safetensors file.

    An 8-byte header length, a JSON header, and tensor data ending exactly at the end of
    the file; and, when the hub named its blob by SHA-256 (its ETag), that hash.

    Parameters
    ----------
    path : pathlib.Path

    Raises
    ------
    DamagedWeights
        If the file is missing, not safetensors, truncated or padded, or its hash differs.
    """
    real = Path(path).resolve()
    if not real.is_file():
        raise DamagedWeights("the cache entry points to a missing file")
    size = real.stat().st_size
    with open(real, "rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n <= 0 or 8 + n > size:
            raise DamagedWeights(f"not a safetensors file ({size:,} bytes)")
        try:
            header = json.loads(fh.read(n))
        except ValueError as err:
            raise DamagedWeights("not a safetensors file (unreadable header)") from err
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    if 8 + n + max(ends, default=0) != size:
        raise DamagedWeights(f"truncated or padded: the header describes {8 + n + max(ends, default=0):,} bytes, "
                             f"the file has {size:,}")
    if _HEX64.fullmatch(real.name) and sha256(real) != real.name:
        raise DamagedWeights("its SHA-256 differs from the hub's ETag it is named by")


def _remove_hub_entry(path: Path) -> None:
    real = path.resolve()
    path.unlink()
    if real != path and real.parent.name == "blobs":
        real.unlink(missing_ok=True)


def hub_file(repo_id: str, filename: str = "model.safetensors", revision: str = "main", what: str = "") -> Path:
    """A checked local copy of a file of a Hugging Face hub repository.

    Looked up in the hub's cache (and our fallback folder) without any network; a damaged
    copy is reported, removed and replaced. Otherwise downloaded as ``huggingface_hub``
    does it (``HEAD .../resolve/<revision>/<filename>``: the commit in ``X-Repo-Commit``,
    the SHA-256 in ``X-Linked-Etag``, the size in ``X-Linked-Size``, the file behind a
    redirect), but with our deadline, cap and hash check, and stored in the hub's cache
    layout (``blobs/<etag>``, ``snapshots/<commit>/<filename>``, ``refs``).

    Parameters
    ----------
    repo_id : str
    filename : str, default "model.safetensors"
    revision : str, default "main"
    what : str, default ""
        What the file is, for messages.

    Returns
    -------
    pathlib.Path
        The checked file in the cache.

    Raises
    ------
    ConnectionError
        Offline with no usable copy, or when the download fails or its check does
        (:class:`chapter6_utils._net.DownloadError`; nothing is cached then).
    """
    what = what or f"{repo_id}/{filename}"
    roots = [hub_cache_dir(), _net.fallback_dir("hf-hub")]
    found = _net.first_usable([_cached_hub_file(root, repo_id, filename, revision) for root in roots],
                              check_safetensors, what, remove=_remove_hub_entry)
    if found is not None:
        return found
    if not _net.online():
        raise ConnectionError(f"offline and no usable cached copy of {what} in {roots[0]}")
    return _hub_download(repo_id, filename, revision, what, _net.writable_dir(roots[0], "hf-hub"))


def _origin(url: str) -> tuple:
    p = urllib.parse.urlparse(url)
    return p.scheme, (p.hostname or "").lower(), p.port or {"http": 80, "https": 443}.get(p.scheme)


def _hub_download(repo_id, filename, revision, what, root: Path) -> Path:
    url = f"{hub_endpoint()}/{repo_id}/resolve/{revision}/{filename}"
    meta_url = url
    status, headers, _ = _net.head(meta_url)
    for _hop in range(5):
        # A redirect within the hub's origin (a renamed repository) is followed for the
        # metadata, as huggingface_hub does; one to another origin is the file's storage
        # (a CDN), and the metadata is on this very response: download from there.
        target = urllib.parse.urljoin(meta_url, headers.get("location", ""))
        if not (300 <= status < 400 and "location" in headers and _origin(target) == _origin(meta_url)):
            break
        meta_url = target
        status, headers, _ = _net.head(meta_url)
    if not 200 <= status < 400 or (status >= 300 and "location" not in headers):
        raise _net.DownloadError(f"{url}: HTTP {status}")
    commit = headers.get("x-repo-commit", "")
    etag = re.sub(r'^W/|"', "", headers.get("x-linked-etag") or headers.get("etag") or "")
    size = headers.get("x-linked-size") or (None if 300 <= status < 400 else headers.get("content-length"))
    if not re.fullmatch(r"[0-9a-f]{40}", commit) or not etag:
        raise _net.DownloadError(f"{url} did not answer like the Hugging Face hub (no X-Repo-Commit or ETag)")
    size = int(size) if size and str(size).isdigit() else None
    source = urllib.parse.urljoin(meta_url, headers["location"]) if 300 <= status < 400 else meta_url
    repo = _repo_folder(root, repo_id)
    blob = repo / "blobs" / etag
    _net.download(source, blob, deadline=deadline_for(size or 500_000_000),
                  max_bytes=(size or 2_000_000_000), expected_size=size)
    link = repo / "snapshots" / commit / filename
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    try:
        link.symlink_to(os.path.relpath(blob, link.parent))
    except OSError:  # no symlinks (Windows without developer mode): the hub then copies too
        shutil.copyfile(blob, link)
    if revision != commit:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / revision).write_text(commit)
    try:
        check_safetensors(link)
    except Exception as err:
        _remove_hub_entry(link)
        raise _net.DownloadError(
            f"the {what} downloaded from {url} failed its check ({err}); nothing was cached") from err
    return link


@contextlib.contextmanager
def hub_offline():
    """A context in which ``huggingface_hub`` refuses every request; ``os.environ`` is untouched.

    The hub reads ``HF_HUB_OFFLINE`` from the environment once, when it is imported, so
    setting the variable later does nothing, and setting it for good would change the
    user's own hub calls. Instead the hub is imported now and its module flag switched for
    the block only (under a lock); the user's setting comes back afterwards.
    """
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    with _HUB_LOCK:
        saved = constants.HF_HUB_OFFLINE
        constants.HF_HUB_OFFLINE = True
        try:
            yield
        finally:
            constants.HF_HUB_OFFLINE = saved
