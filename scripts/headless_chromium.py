"""A headless Chromium driven over the DevTools protocol through a pipe: the one browser that
scripts/browser_check.py (checks the built book) and scripts/make_downloads.py (prints the
whole-book PDF) share. Standard library only.

Which binary: ``$CHROMIUM`` when set (a name on PATH or a path), else the first of
``chromium``, ``chromium-browser``, ``google-chrome``, ``google-chrome-stable``.

Sandbox: as root Chromium refuses its sandbox, so ``--no-sandbox`` is added there only.
``CHROMIUM_NO_SANDBOX=1`` adds it for other users too, for a machine whose kernel forbids the
sandbox (Ubuntu 24.04's AppArmor rule on unprivileged user namespaces); the pages opened are
the book's own files. GitHub's ubuntu-24.04 runners need neither: their Google Chrome comes
with an AppArmor profile that allows its sandbox (.github/workflows/pages.yml uses it).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WIDTH, HEIGHT = 1280, 900


class Chromium:
    """A headless Chromium driven over the DevTools protocol through a pipe (fds 3 and 4)."""

    def __init__(self, binary: str, timeout: float = 60.0):
        self.timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="browser-check-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_pipes():  # runs in the child: the protocol expects fd 3 (in) and fd 4 (out)
            r, w = os.dup(to_browser_r), os.dup(from_browser_w)  # above 4, whatever the originals were
            os.dup2(r, 3)
            os.dup2(w, 4)
            os.set_inheritable(3, True)
            os.set_inheritable(4, True)

        args = [binary, "--headless=new", "--remote-debugging-pipe", f"--user-data-dir={self._profile}",
                "--disable-gpu", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--disable-background-networking", "--disable-sync", "--mute-audio", "--hide-scrollbars",
                "--allow-file-access-from-files", f"--window-size={WIDTH},{HEIGHT}", "about:blank"]
        if (hasattr(os, "geteuid") and os.geteuid() == 0) or os.environ.get("CHROMIUM_NO_SANDBOX") == "1":
            args.insert(1, "--no-sandbox")  # Chromium refuses to start its sandbox as root
        # Chromium's own log goes to a file: an unread pipe could fill up and stall it.
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self._log,
                                     preexec_fn=wire_pipes, close_fds=False)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict] = []
        self.requests: list[tuple[str, str]] = []  # (resource type, URL), since the last load()

    # -- protocol -----------------------------------------------------------------------
    def _read_message(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    self._log.seek(0)
                    err = self._log.read().decode(errors="replace")[-2000:]
                    if "No usable sandbox" in err:
                        err += ("\nThis kernel forbids Chromium's sandbox (Ubuntu 24.04: AppArmor restricts "
                                "unprivileged user namespaces). Use a browser that ships an AppArmor profile "
                                "(Google Chrome: CHROMIUM=google-chrome), or set CHROMIUM_NO_SANDBOX=1.")
                    raise RuntimeError(f"Chromium closed the DevTools pipe (exit {self.proc.poll()}):\n{err}")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message = json.loads(raw)
        if message.get("method") == "Network.requestWillBeSent":  # every request a page makes
            request = message["params"]["request"]
            self.requests.append((message["params"].get("type", "?"), request["url"]))
        return message

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float | None = None) -> dict:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)

    def wait_event(self, method: str, session: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self._events):
                if ev.get("method") == method and ev.get("sessionId") == session:
                    del self._events[: i + 1]
                    return True
            try:
                self._events.append(self._read_message(deadline))
            except TimeoutError:
                return False

    # -- pages ---------------------------------------------------------------------------
    def open_tab(self) -> str:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Page.enable", session=session)
        self.send("Runtime.enable", session=session)
        self.send("Network.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False}, session=session)
        return session

    def load(self, session: str, url: str, timeout: float) -> bool:
        self._events.clear()
        self.requests.clear()
        self.send("Page.navigate", {"url": url}, session=session)
        return self.wait_event("Page.loadEventFired", session, timeout)

    def evaluate(self, session: str, expression: str, timeout: float = 30.0):
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True}, session=session, timeout=timeout)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, session: str, path: Path, full_height: int | None = None) -> None:
        """The window as it is scrolled now, or (``full_height``) the page from the top with
        the window made that tall (a clip beyond the viewport shifts the book's layout)."""
        if full_height is not None:
            self.send("Emulation.setDeviceMetricsOverride", {"width": WIDTH, "height": full_height,
                                                            "deviceScaleFactor": 1, "mobile": False},
                      session=session)
            self.evaluate(session, "window.scrollTo(0, 0); new Promise(r => setTimeout(r, 300))")
        try:
            data = self.send("Page.captureScreenshot", {"format": "png"}, session=session, timeout=120)["data"]
        finally:
            if full_height is not None:
                self.send("Emulation.setDeviceMetricsOverride", {"width": WIDTH, "height": HEIGHT,
                                                                "deviceScaleFactor": 1, "mobile": False},
                          session=session)
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:  # noqa: BLE001 -- closing anyway
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self._profile, ignore_errors=True)
        self._log.close()


def find_chromium() -> str | None:
    for name in [os.environ.get("CHROMIUM", "")] + list(CANDIDATES):
        if name and shutil.which(name):
            return shutil.which(name)
    return None
