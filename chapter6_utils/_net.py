"""Network plumbing: one short probe per process, one-line notices, a cache folder.

The companion has to work on machines with no internet (CI runners, air-gapped
laptops, this repository's own test machine). Downloads there do not always fail
fast: a firewall that drops packets makes every socket wait for its timeout, and
some libraries retry for a minute. So the package asks :func:`online` once, with a
hard time bound, and every caller that would download checks it first and falls
back to something bundled.

This module imports nothing else from ``chapter6_utils``.
"""
from __future__ import annotations

import hashlib
import os
import socket
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

__all__ = ["online", "notice", "cache_dir", "cache_path_for", "download"]

#: Hosts the package actually downloads from; reaching one of them is what matters.
PROBE_HOSTS = (("download.pytorch.org", 443), ("huggingface.co", 443))

_TRUTHY = {"1", "true", "yes", "on"}

# None means "not probed yet in this process".
_ONLINE: bool | None = None
_LOCK = threading.Lock()


def _reset() -> None:
    """Forget the cached probe result (for tests)."""
    global _ONLINE
    with _LOCK:
        _ONLINE = None


def _forced_offline() -> bool:
    return os.environ.get("CHAPTER6_OFFLINE", "").strip().lower() in _TRUTHY


def _probe(timeout: float, deadline: float) -> bool:
    for i, (host, port) in enumerate(PROBE_HOSTS):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            conn = socket.create_connection((host, port), timeout=min(timeout, remaining))
        except (socket.timeout, TimeoutError):
            # Packets are being dropped: a second host would only wait as long again.
            return False
        except OSError:
            # DNS failure or refusal is instant, so trying the other host is cheap.
            continue
        else:
            conn.close()
            return True
    return False


def online(timeout: float = 1.5) -> bool:
    """Return True if the download hosts are reachable; probe at most once per process.

    Set ``CHAPTER6_OFFLINE=1`` (or ``true``/``yes``) to skip the probe and force the
    offline fallbacks. Otherwise a TCP connect to ``download.pytorch.org:443`` (and,
    if that fails instantly, ``huggingface.co:443``) decides; the answer is cached.

    ``timeout`` bounds each connect; the whole probe, DNS lookup included, is bounded
    by ``2 * timeout`` (3 s by default).
    """
    global _ONLINE
    if _forced_offline():
        return False
    with _LOCK:
        if _ONLINE is not None:
            return _ONLINE
        budget = 2.0 * float(timeout)
        result: list[bool] = []

        def run() -> None:
            try:
                result.append(_probe(timeout, time.monotonic() + budget))
            except Exception:  # an odd failure means no usable network
                result.append(False)

        # getaddrinfo ignores socket timeouts and can hang on a broken resolver, so the
        # probe runs in a daemon thread and we stop waiting for it at the deadline.
        worker = threading.Thread(
            target=run,
            name="chapter6_utils-net-probe",
            daemon=True,
        )
        worker.start()
        worker.join(budget + 0.1)
        _ONLINE = bool(result and result[0])
        return _ONLINE


def notice(msg: str) -> None:
    """Print ``msg`` as one line prefixed ``[chapter6_utils] `` on stdout.

    stdout rather than ``warnings`` or stderr: notebooks show it plainly and it is
    not deduplicated away on the second run of a cell.
    """
    line = " ".join(str(msg).split())
    print(f"[chapter6_utils] {line}", file=sys.stdout, flush=True)


def cache_dir() -> Path:
    """The download cache: ``$CHAPTER6_CACHE`` or ``~/.cache/chapter6_utils`` (created)."""
    env = os.environ.get("CHAPTER6_CACHE")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "chapter6_utils"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_path_for(url: str) -> Path:
    """Where :func:`download` keeps ``url``: ``<cache_dir>/<name>-<hash8><suffix>``.

    The short hash keeps two files called ``dog.jpg`` from different sites apart;
    the readable name keeps the cache browsable.
    """
    name = Path(urllib.parse.urlparse(url).path).name or "download"
    stem, suffix = os.path.splitext(name)
    digest = hashlib.sha1(url.encode("utf-8")).hexdigest()[:8]
    return cache_dir() / f"{stem}-{digest}{suffix}"


def download(url: str, dest: Path | None = None, timeout: float = 5.0) -> Path:
    """Download ``url`` to ``dest`` (default :func:`cache_path_for`) and return the path.

    Does not check :func:`online`; callers do. The file is written under a temporary
    name and renamed at the end so an interrupted download never looks cached.
    Raises ``ConnectionError`` on any network failure.
    """
    dest = Path(dest) if dest is not None else cache_path_for(url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    request = urllib.request.Request(url, headers={"User-Agent": "chapter6_utils"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "wb") as fh:
            while chunk := response.read(1 << 16):
                fh.write(chunk)
        os.replace(tmp, dest)
    except OSError as exc:  # URLError, HTTPError, socket.timeout are all OSErrors
        tmp.unlink(missing_ok=True)
        raise ConnectionError(f"could not download {url}: {exc}") from exc
    return dest
