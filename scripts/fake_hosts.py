"""A local stand-in for the hosts the companion downloads from, on 127.0.0.1.

One HTTP server (a thread of the calling process) answers for every host at
``http://127.0.0.1:PORT/<host>/<path>``, the layout ``CHAPTER6_MIRROR`` makes the package
request (see ``chapter6_utils._net.via_mirror``). A second port on 127.0.0.1 is the
storage host that redirects leave for (another origin, as a CDN is: the hub's client
follows a redirect within its own origin for the metadata and stops at another origin's):

* ``download.pytorch.org/models/<name>-<sha256 prefix>.pth``: torch hub checkpoints;
* ``huggingface.co/<repo>/resolve/<revision>/<file>``: the Hugging Face hub, answering as
  the hub does (``X-Repo-Commit``; a small file with its git ETag and its body; an LFS
  file with a 302 to its storage host and ``X-Linked-Etag`` = its SHA-256 and
  ``X-Linked-Size``), and ``cdn-lfs.hf.co/...`` serving the LFS bodies;
* ``github.com/pytorch/hub/raw/master/images/dog.jpg``: GitHub's 302 to
  ``raw.githubusercontent.com``, which serves the JPEG.

For fault injection a route can misbehave: ``truncate`` (announce the length, send half,
close), ``stall`` (send part, then go silent until the server stops), ``trickle`` (one
byte at a time, slowly), ``overlong`` (no Content-Length, more bytes than asked for),
``huge_length`` (announce 10 GB). Every request is logged in ``hosts.log`` as
``(method, path, status)``.

The builders make files in the formats the real hosts serve, with random values:
:func:`torchvision_checkpoint` (a state dict saved with ``torch.save``, named with its own
hash prefix), :func:`timm_hub_repo` (``model.safetensors`` and ``config.json`` as timm
publishes them) and :func:`photo_jpeg`. Used by ``scripts/rehearse_online.py`` and the tests.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading
import time
from pathlib import Path

BEHAVIOURS = ("truncate", "stall", "trickle", "overlong", "huge_length")


class _Route:
    def __init__(self, body, status=200, headers=None, behaviour=None, head_status=None):
        self.body = body  # bytes or a Path (streamed)
        self.status = status
        self.headers = dict(headers or {})
        self.behaviour = behaviour
        if behaviour is not None and behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r}; one of {BEHAVIOURS}")

    def size(self) -> int:
        return self.body.stat().st_size if isinstance(self.body, Path) else len(self.body)

    def chunks(self, size=1 << 16):
        if isinstance(self.body, Path):
            with open(self.body, "rb") as fh:
                while chunk := fh.read(size):
                    yield chunk
        else:
            for i in range(0, len(self.body), size):
                yield self.body[i:i + size]


def sha256(data_or_path) -> str:
    h = hashlib.sha256()
    if isinstance(data_or_path, Path):
        with open(data_or_path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    else:
        h.update(data_or_path)
    return h.hexdigest()


class FakeHosts:
    """The server. ``with FakeHosts() as hosts: ... hosts.url ...``; routes can be added
    before or after it starts."""

    def __init__(self):
        self.routes: dict[str, _Route] = {}
        self.log: list[tuple[str, str, int]] = []
        self.release = threading.Event()  # stalled responses end when it is set
        self._servers = []

    # ------------------------------------------------------------------ routes
    def add(self, path: str, body, *, status=200, headers=None, behaviour=None) -> str:
        """Serve ``body`` (bytes or a file) at ``/<path>``; returns its full URL."""
        path = "/" + path.lstrip("/")
        self.routes[path] = _Route(body if isinstance(body, (bytes, bytearray)) else Path(body),
                                   status, headers, behaviour)
        return self.url + path if self._servers else path

    def redirect(self, path: str, target: str, status: int = 302, headers=None) -> None:
        """Answer ``/<path>`` with ``status`` and ``Location: target`` (absolute or ``/...``)."""
        self.routes["/" + path.lstrip("/")] = _Route(b"", status, {"Location": target, **(headers or {})})

    def add_torch_checkpoint(self, path: Path) -> str:
        """Serve a torch hub checkpoint as download.pytorch.org does; returns its published URL."""
        self.add(f"download.pytorch.org/models/{path.name}", path,
                 headers={"Content-Type": "application/octet-stream", "ETag": f'"{sha256(path)[:32]}"'})
        return f"https://download.pytorch.org/models/{path.name}"

    def add_hub_repo(self, repo_id: str, files: dict, lfs=(".safetensors", ".bin", ".pth")) -> str:
        """Serve ``files`` ({name: path}) as the Hugging Face hub serves repository ``repo_id``
        at revision ``main``; returns the commit hash it announces."""
        commit = hashlib.sha1(f"commit of {repo_id}".encode()).hexdigest()
        for name, path in files.items():
            path = Path(path)
            common = {"X-Repo-Commit": commit, "Accept-Ranges": "bytes", "Vary": "Origin, Accept"}
            for revision in ("main", commit):
                resolve = f"huggingface.co/{repo_id}/resolve/{revision}/{name}"
                if name.endswith(lfs):
                    sha = sha256(path)
                    pointer = (f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\n"
                               f"size {path.stat().st_size}\n")
                    blob = f"cdn-lfs.hf.co/repos/{sha[:2]}/{sha[2:4]}/{sha}"
                    self.add(blob, path, headers={"Content-Type": "binary/octet-stream", "ETag": f'"{sha}"'})
                    self.redirect(resolve, "{STORAGE}/" + blob, headers={
                        **common, "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(path.stat().st_size),
                        "ETag": f'"{_git_blob_sha1(pointer.encode())}"'})
                else:
                    data = path.read_bytes()
                    self.add(resolve, path, headers={**common, "ETag": f'"{_git_blob_sha1(data)}"',
                                                     "Content-Type": "text/plain; charset=utf-8"})
        return commit

    def add_photo(self, path: Path) -> str:
        """Serve the JPEG behind GitHub's raw link (a 302, as github.com answers); returns that link."""
        self.add("raw.githubusercontent.com/pytorch/hub/master/images/dog.jpg", path,
                 headers={"Content-Type": "image/jpeg"})
        self.redirect("github.com/pytorch/hub/raw/master/images/dog.jpg",
                      "{STORAGE}/raw.githubusercontent.com/pytorch/hub/master/images/dog.jpg")
        return "https://github.com/pytorch/hub/raw/master/images/dog.jpg"

    def gets(self, fragment: str) -> int:
        """How many GET requests for paths containing ``fragment`` were answered."""
        return sum(1 for method, path, _ in self.log if method == "GET" and fragment in path)

    # ------------------------------------------------------------------ server
    @property
    def url(self) -> str:
        if not self._servers:
            raise RuntimeError("the fake hosts are not started")
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def storage_url(self) -> str:
        """The storage host (another origin) that the hub's and GitHub's redirects point to."""
        if not self._servers:
            raise RuntimeError("the fake hosts are not started")
        return f"http://127.0.0.1:{self._servers[1].server_address[1]}"

    def start(self) -> "FakeHosts":
        hosts = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet; hosts.log keeps the record
                pass

            def do_HEAD(self):
                self._answer(send_body=False)

            def do_GET(self):
                self._answer(send_body=True)

            def _answer(self, send_body):
                path = self.path.split("?", 1)[0]
                route = hosts.routes.get(path)
                status = route.status if route else 404
                hosts.log.append((self.command, path, status))
                if route is None:
                    body = b"Entry not found"
                    self.send_response(404)
                    self.send_header("Content-Length", str(len(body)))
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.end_headers()
                    if send_body:
                        self.wfile.write(body)
                    return
                self.send_response(status)
                for k, v in route.headers.items():
                    self.send_header(k, v.replace("{STORAGE}", hosts.storage_url))
                size, mode = route.size(), route.behaviour
                if mode == "huge_length":
                    self.send_header("Content-Length", str(10 ** 10))
                elif mode != "overlong":
                    self.send_header("Content-Length", str(size))
                if mode in ("truncate", "overlong", "stall", "huge_length"):
                    self.send_header("Connection", "close")
                self.end_headers()
                if not send_body or status >= 300:
                    return
                if mode == "truncate":
                    self.wfile.write(b"".join(route.chunks())[: size // 2])
                    self.close_connection = True
                elif mode == "stall":
                    self.wfile.write(b"".join(route.chunks())[: size // 4])
                    self.wfile.flush()
                    hosts.release.wait(600)  # silent until the server stops (hang guard)
                    self.close_connection = True
                elif mode == "trickle":
                    for byte in b"".join(route.chunks()):
                        if hosts.release.is_set():
                            break
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(0.05)
                elif mode == "overlong":
                    while not hosts.release.is_set():  # far more than the body: a cap must stop it
                        try:
                            self.wfile.write(b"\0" * (1 << 16))
                        except OSError:
                            break
                    self.close_connection = True
                else:
                    for chunk in route.chunks():
                        self.wfile.write(chunk)

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # a client that hung up mid-body is part of the tests

        for role in ("hosts", "storage"):
            server = Server(("127.0.0.1", 0), Handler)
            threading.Thread(target=server.serve_forever, name=f"fake-{role}", daemon=True).start()
            self._servers.append(server)
        return self

    def stop(self) -> None:
        self.release.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers = []

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# --------------------------------------------------------------------------- file builders
def torchvision_checkpoint(arch: str, folder: Path, seed: int = 0) -> Path:
    """torchvision's ``arch`` with random weights, saved as torchvision publishes its
    weights (a plain state dict, ``torch.save``) under torch hub's name
    ``<arch>-<first 8 hex digits of its SHA-256>.pth``."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    state = getattr(torchvision.models, arch)(weights=None).state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{arch}.tmp"
    torch.save(state, tmp)
    path = folder / f"{arch}-{sha256(tmp)[:8]}.pth"
    os.replace(tmp, path)
    return path


def timm_hub_repo(arch: str, folder: Path, seed: int = 0) -> tuple[str, dict]:
    """``(repo_id, {"model.safetensors": path, "config.json": path})`` for timm's ``arch``
    with random weights, in the format timm publishes on the hub."""
    import safetensors.torch
    import timm
    import torch

    cfg = timm.models.get_pretrained_cfg(arch)
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False)
    out = folder / cfg.hf_hub_id.replace("/", "--")
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "model.safetensors"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state, str(weights), metadata={"format": "pt"})
    config = {"architecture": arch.split(".")[0], "num_classes": model.num_classes,
              "num_features": model.num_features, "global_pool": getattr(model, "global_pool", ""),
              "pretrained_cfg": {k: v for k, v in cfg.to_dict().items()
                                 if isinstance(v, (str, int, float, list, tuple))}}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return cfg.hf_hub_id, {"model.safetensors": weights, "config.json": out / "config.json"}


def photo_jpeg(path: Path, size=(640, 480), seed: int = 0) -> Path:
    """A JPEG photo stand-in (smooth colour fields and noise), written to ``path``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([0.5 + 0.4 * np.sin(6 * xx), 0.5 + 0.4 * np.cos(5 * yy), 0.6 - 0.3 * xx], -1)
    img = np.clip(img + 0.05 * rng.standard_normal(img.shape), 0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((img * 255).astype("uint8")).save(path, format="JPEG", quality=90)
    return path
