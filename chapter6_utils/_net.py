"""Network plumbing: one short probe per process, honest downloads, cache folders, notices.

The companion has to work on machines with no internet (CI runners, air-gapped laptops,
this repository's own test machine) and on slow or broken ones. Downloads there do not
always fail fast: a firewall that drops packets makes every socket wait for its timeout,
a hanging resolver ignores socket timeouts altogether, and a server can trickle bytes
for ever. So:

* :func:`online` asks once per process, with a hard time bound, and every caller that
  would download checks it first and falls back to something bundled;
* :func:`download` has a *total* deadline (not a per-read one), a size cap, checks the
  body against Content-Length, and renames the file into place only when it is whole;
* :func:`fetch` is the cache every download goes through: a cached copy is checked
  before use, and a damaged one is reported in one line and replaced, never reused;
* a cache folder that cannot be written falls back to a per-user temporary folder.

``CHAPTER6_MIRROR=http://host:port`` sends every download to a stand-in server that
serves ``<mirror>/<original host><original path>`` (``scripts/rehearse_online.py``
runs the notebooks' pretrained path against such a server). ``CHAPTER6_OFFLINE=1``
forces the offline fallbacks without probing.

This module imports nothing else from ``chapter6_utils``.
"""
from __future__ import annotations

import getpass
import hashlib
import os
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Optional

__all__ = ["online", "notice", "mirror", "via_mirror", "cache_dir", "cache_path_for", "writable_dir",
           "download", "fetch", "first_usable", "head", "DownloadError"]

#: Hosts the package actually downloads from; reaching one of them is what matters.
PROBE_HOSTS = (("download.pytorch.org", 443), ("huggingface.co", 443))

_TRUTHY = {"1", "true", "yes", "on"}
_USER_AGENT = "chapter6_utils"

# Probe results by probed hosts ("not probed yet in this process" when absent).
_ONLINE: dict = {}
_LOCK = threading.Lock()
_SAID: set = set()  # notices printed once per process


class DownloadError(ConnectionError):
    """A download failed or was refused (deadline, size cap, short body, HTTP error).

    Nothing is cached when it is raised: the partial file is removed."""


def _reset() -> None:
    """Forget the cached probe results and the once-only notices (for tests)."""
    with _LOCK:
        _ONLINE.clear()
        _SAID.clear()


def _forced_offline() -> bool:
    return os.environ.get("CHAPTER6_OFFLINE", "").strip().lower() in _TRUTHY


# --------------------------------------------------------------------------- the mirror
def mirror() -> Optional[str]:
    """The stand-in server named by ``$CHAPTER6_MIRROR`` (no trailing slash), or None.

    Returns
    -------
    str or None

    Raises
    ------
    ValueError
        If the variable is set to something other than an http(s) URL.
    """
    value = os.environ.get("CHAPTER6_MIRROR", "").strip().rstrip("/")
    if not value:
        return None
    parsed = urllib.parse.urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"CHAPTER6_MIRROR={value!r} is not an http(s) URL; set it like "
                         "http://127.0.0.1:8000, or unset it")
    return value


def via_mirror(url: str) -> str:
    """``url`` as the mirror serves it.

    Parameters
    ----------
    url : str

    Returns
    -------
    str
        ``<mirror>/<host><path>``, or ``url`` itself without a mirror.
    """
    base = mirror()
    if base is None:
        return url
    p = urllib.parse.urlparse(url)
    return f"{base}/{p.netloc}{p.path}" + (f"?{p.query}" if p.query else "")


def _probe_hosts() -> tuple:
    base = mirror()
    if base is None:
        return PROBE_HOSTS
    p = urllib.parse.urlparse(base)
    return ((p.hostname, p.port or (443 if p.scheme == "https" else 80)),)


# --------------------------------------------------------------------------- the probe
def _probe(hosts, timeout: float, deadline: float) -> bool:
    for host, port in hosts:
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


def _bounded(fn: Callable, budget: float, name: str):
    """Run ``fn()`` in a daemon thread; return ``(done, value_or_exception)`` after at most
    ``budget`` seconds. ``getaddrinfo`` ignores socket timeouts and can hang on a broken
    resolver, so anything that resolves a name runs here and we stop waiting at the deadline."""
    box: list = []

    def run():
        try:
            box.append((True, fn()))
        except BaseException as exc:  # noqa: BLE001 -- handed to the caller
            box.append((False, exc))

    worker = threading.Thread(target=run, name=f"chapter6_utils-{name}", daemon=True)
    worker.start()
    worker.join(budget)
    return (True, box[0]) if box else (False, None)


def online(timeout: float = 1.5) -> bool:
    """Whether the download hosts are reachable; probed at most once per process.

    ``CHAPTER6_OFFLINE=1`` (or ``true``/``yes``) skips the probe and forces the offline
    fallbacks. Otherwise a TCP connect to ``download.pytorch.org:443`` (and, if that fails
    at once, ``huggingface.co:443``) decides, or to the mirror when ``CHAPTER6_MIRROR`` is
    set; the answer is cached for the process.

    Parameters
    ----------
    timeout : float, default 1.5
        Seconds for each connect; the whole probe, DNS lookup included, is bounded by
        ``2 * timeout``, even when the resolver hangs.

    Returns
    -------
    bool
    """
    if _forced_offline():
        return False
    hosts = _probe_hosts()
    with _LOCK:
        if hosts not in _ONLINE:
            budget = 2.0 * float(timeout)
            done, result = _bounded(lambda: _probe(hosts, timeout, time.monotonic() + budget),
                                    budget + 0.1, "net-probe")
            _ONLINE[hosts] = bool(done and result[0] and result[1])
        return _ONLINE[hosts]


def notice(msg: str, once: bool = False) -> None:
    """Print ``msg`` as one line prefixed ``[chapter6_utils] `` on stdout.

    stdout rather than ``warnings`` or stderr: notebooks show it plainly, and it is not
    deduplicated away on the second run of a cell.

    Parameters
    ----------
    msg : str
    once : bool, default False
        Print a given message once per process.
    """
    line = " ".join(str(msg).split())
    if once:
        with _LOCK:
            if line in _SAID:
                return
            _SAID.add(line)
    print(f"[chapter6_utils] {line}", file=sys.stdout, flush=True)


# --------------------------------------------------------------------------- cache folders
def _can_write(folder: Path) -> bool:
    # Try it: os.access() says yes to root in a read-only folder and knows nothing of ACLs.
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            return True
    except OSError:
        return False


def _user() -> str:
    try:
        return str(os.getuid())
    except AttributeError:  # Windows
        return getpass.getuser()


def fallback_dir(kind: str) -> Path:
    """The per-user temporary folder used when the usual cache of ``kind`` cannot be written.

    Parameters
    ----------
    kind : str
        Which cache ("cache", "hub", ...): one subfolder each.

    Returns
    -------
    pathlib.Path
    """
    return Path(tempfile.gettempdir()) / f"chapter6_utils-{_user()}" / kind


def writable_dir(preferred: Path, kind: str) -> Path:
    """``preferred`` (created) when it can be written, else :func:`fallback_dir` (said once).

    Parameters
    ----------
    preferred : pathlib.Path
    kind : str

    Returns
    -------
    pathlib.Path
    """
    preferred = Path(preferred)
    if _can_write(preferred):
        return preferred
    fallback = fallback_dir(kind)
    fallback.mkdir(parents=True, exist_ok=True)
    notice(f"cannot write to {preferred}: downloads go to {fallback} instead "
           "(set CHAPTER6_CACHE, TORCH_HOME or HF_HOME to a writable folder)", once=True)
    return fallback


def _preferred_cache() -> Path:
    env = os.environ.get("CHAPTER6_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "chapter6_utils"


def cache_dir() -> Path:
    """The download cache folder.

    Returns
    -------
    pathlib.Path
        ``$CHAPTER6_CACHE`` or ``~/.cache/chapter6_utils``, or the per-user temporary
        fallback when that cannot be written.
    """
    return writable_dir(_preferred_cache(), "cache")


def cache_path_for(url: str, folder: Path | None = None) -> Path:
    """Where :func:`fetch` keeps ``url``: ``<folder>/<name>-<hash8><suffix>``.

    The short hash keeps two files called ``dog.jpg`` from different sites apart; the
    readable name keeps the cache browsable.

    Parameters
    ----------
    url : str
    folder : pathlib.Path, optional
        Default: the usual cache folder (whether or not it can be written).

    Returns
    -------
    pathlib.Path
    """
    name = Path(urllib.parse.urlparse(url).path).name or "download"
    stem, suffix = os.path.splitext(name)
    digest = hashlib.sha1(url.encode("utf-8")).hexdigest()[:8]
    return Path(folder or _preferred_cache()) / f"{stem}-{digest}{suffix}"


# --------------------------------------------------------------------------- downloads
class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # hand the 3xx back to the caller


def head(url: str, timeout: float = 10.0, follow: bool = False) -> tuple[int, dict, str]:
    """``HEAD url`` within ``timeout`` seconds in all.

    Parameters
    ----------
    url : str
    timeout : float, default 10.0
    follow : bool, default False
        False returns a redirect as it is (status 3xx, its ``Location``), as the Hugging
        Face hub's metadata request needs.

    Returns
    -------
    status : int
    headers : dict
    final_url : str

    Raises
    ------
    DownloadError
        No answer in time, or no connection.
    """
    def run():
        handlers = [] if follow else [_NoRedirect()]
        opener = urllib.request.build_opener(*handlers)
        req = urllib.request.Request(url, method="HEAD", headers={"User-Agent": _USER_AGENT,
                                                                  "Accept-Encoding": "identity"})
        try:
            with opener.open(req, timeout=timeout) as resp:
                return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.geturl()
        except urllib.error.HTTPError as err:
            if 300 <= err.code < 400:
                return err.code, {k.lower(): v for k, v in err.headers.items()}, url
            raise

    done, result = _bounded(run, timeout, "head")
    if not done:
        raise DownloadError(f"no answer from {url} within {timeout:.0f} s")
    if not result[0]:
        raise DownloadError(f"could not reach {url}: {result[1]}") from result[1]
    return result[1]


def download(url: str, dest: Path, *, deadline: float = 60.0, max_bytes: int = 200_000_000,
             read_timeout: float = 15.0, expected_size: int | None = None) -> Path:
    """Download ``url`` to ``dest``; does not check :func:`online`.

    The body is written under a temporary name and renamed to ``dest`` only when it is
    whole, so an interrupted or short download is never cached.

    Parameters
    ----------
    url : str
    dest : pathlib.Path
    deadline : float, default 60.0
        Seconds for the whole download, DNS lookup included (a server that trickles bytes
        cannot stretch it).
    max_bytes : int, default 200_000_000
        Larger bodies, announced or not, are refused.
    read_timeout : float, default 15.0
        The longest silence tolerated within the deadline.
    expected_size : int, optional
        The size the publisher announced elsewhere (a hub header).

    Returns
    -------
    pathlib.Path
        ``dest``.

    Raises
    ------
    DownloadError
        (a ``ConnectionError``) on any failure: deadline, size cap, short body, HTTP error.
    """
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}-{threading.get_ident()}.part")
    cancelled = threading.Event()

    def run() -> int:
        req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"})
        total = 0
        try:
            # A silence as long as the deadline is the deadline's to report: the socket
            # waits a second longer, so the two do not race to say the same thing.
            silence = read_timeout if read_timeout < deadline else deadline + 1.0
            with urllib.request.urlopen(req, timeout=silence) as resp, open(tmp, "wb") as fh:
                announced = resp.headers.get("Content-Length")
                announced = int(announced) if announced and announced.strip().isdigit() else None
                for size, source in ((announced, "Content-Length"), (expected_size, "the publisher")):
                    if size is not None and size > max_bytes:
                        raise DownloadError(f"{url}: {source} announces {size:,} bytes, more than the "
                                            f"{max_bytes:,}-byte cap")
                while True:
                    if cancelled.is_set():
                        raise DownloadError("cancelled at the deadline")
                    try:
                        chunk = resp.read(1 << 16)
                    except Exception as exc:  # IncompleteRead, a reset, a read timeout
                        raise DownloadError(f"{url}: body broke off after {total:,} of "
                                            f"{announced or '?'} bytes ({type(exc).__name__})") from exc
                    if not chunk:
                        break
                    total += len(chunk)
                    if total > max_bytes:
                        raise DownloadError(f"{url}: body exceeds the {max_bytes:,}-byte cap")
                    fh.write(chunk)
            for size, source in ((announced, "Content-Length"), (expected_size, "the publisher")):
                if size is not None and total != size:
                    raise DownloadError(f"{url}: got {total:,} bytes, {source} announced {size:,} "
                                        "(a short or overlong body is never cached)")
            return total
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            if cancelled.is_set():  # the caller has given up: leave nothing behind
                tmp.unlink(missing_ok=True)

    dest.parent.mkdir(parents=True, exist_ok=True)
    done, result = _bounded(run, deadline, "download")
    if not done:
        cancelled.set()
        try:  # the worker also removes it when it wakes; on Windows an open file stays till then
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise DownloadError(f"{url}: not complete within the {deadline:.0f}-second deadline; nothing was cached")
    ok, value = result
    if not ok:
        if isinstance(value, DownloadError):
            raise value
        raise DownloadError(f"could not download {url}: {value}") from value
    os.replace(tmp, dest)
    return dest


def first_usable(paths, check: Callable[[Path], None], what: str,
                 remove: Callable[[Path], None] = Path.unlink) -> Optional[Path]:
    """The first of ``paths`` (None entries skipped) that exists and passes ``check``.

    Each damaged one on the way is reported in one line and removed with ``remove``, or,
    where that fails (a read-only folder), passed over: a damaged file is never used.

    Parameters
    ----------
    paths : iterable of pathlib.Path or None
    check : callable
        ``check(path)`` raises on a damaged file.
    what : str
        What the file is, for the report.
    remove : callable, default pathlib.Path.unlink

    Returns
    -------
    pathlib.Path or None
        None when no path is usable.
    """
    for path in paths:
        if path is None or not (path.exists() or path.is_symlink()):
            continue
        try:
            check(path)
            return path
        except Exception as err:  # noqa: BLE001 -- any failed check means: do not use it
            try:
                remove(path)
                fate = "removed it"
            except OSError:
                fate = "cannot remove it (read-only folder), so it is passed over"
            notice(f"the cached {what} at {path} is damaged ({err}): {fate}; downloading it again if online.")
    return None


def fetch(url: str, dest: Path, *, kind: str, what: str, check: Callable[[Path], None],
          deadline: float = 60.0, max_bytes: int = 200_000_000) -> Path:
    """A checked local copy of ``url``.

    ``dest`` (or its twin in the fallback folder) when a copy there passes ``check``, else
    downloaded (through the mirror when one is set), checked and renamed into place. A
    damaged cached copy is reported in one line and removed (or, where it cannot be
    removed, passed over).

    Parameters
    ----------
    url : str
    dest : pathlib.Path
    kind : str
        Names the fallback folder.
    what : str
        What the file is, for messages.
    check : callable
        ``check(path)`` raises on a damaged file.
    deadline, max_bytes
        As in :func:`download`.

    Returns
    -------
    pathlib.Path
        The checked copy.

    Raises
    ------
    ConnectionError
        Offline with no good copy (at once).
    DownloadError
        When the download or its check fails; nothing is cached.
    """
    dest = Path(dest)
    found = first_usable([dest, fallback_dir(kind) / dest.name], check, what)
    if found is not None:
        return found
    if not online():
        raise ConnectionError(f"offline and no usable cached copy of {what} at {dest}")
    target = writable_dir(dest.parent, kind) / dest.name
    download(via_mirror(url), target, deadline=deadline, max_bytes=max_bytes)
    try:
        check(target)
    except Exception as err:
        target.unlink(missing_ok=True)
        raise DownloadError(f"the {what} downloaded from {url} failed its check ({err}); nothing was cached") from err
    return target
