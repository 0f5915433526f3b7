"""A headless Debian ``chromium`` driven over the Chrome DevTools Protocol, for page tests.

The browser is started with ``--remote-debugging-port=0``; it writes the port it chose and the
browser's websocket path to ``DevToolsActivePort`` in its profile directory, and we talk CDP over
that websocket (``websocket-client``). One page (a target attached in flat mode) is enough.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import websocket

__all__ = ["Page", "chromium"]

_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--remote-debugging-port=0",
)  # fmt: skip


class Page:
    """One browser page: send commands, collect events (console errors, requests)."""

    def __init__(self, ws: websocket.WebSocket, session: str) -> None:
        self._ws = ws
        self._session = session
        self._next = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return _send(self, method, params, self._session)

    def wait_for(self, method: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.get("method") == method and event.get("sessionId") == self._session:
                    self.events.remove(event)
                    return event
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {method} within {timeout}s")
            self.events.append(json.loads(self._ws.recv()))

    def open(self, url: str) -> None:
        """Navigate to ``url`` and wait until it has loaded."""
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1100, "height": 900, "deviceScaleFactor": 1, "mobile": False},
        )
        self.send("Page.navigate", {"url": url})
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        reply = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in reply:
            raise AssertionError(f"{expression}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def console_errors(self) -> list[str]:
        """Uncaught exceptions, console.error/assert calls and error log entries so far."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(json.dumps(params["exceptionDetails"]))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(json.dumps(params.get("args")))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                found.append(params["entry"].get("text", ""))
        return found

    def requested_urls(self) -> list[str]:
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent"
        ]

    def screenshot(self, path: Path) -> bytes:
        data = base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])
        path.write_bytes(data)
        return data


def _send(page: Page, method: str, params: dict[str, Any] | None, session: str | None) -> Any:
    page._next += 1
    message: dict[str, Any] = {"id": page._next, "method": method, "params": params or {}}
    if session:
        message["sessionId"] = session
    page._ws.send(json.dumps(message))
    while True:
        reply = json.loads(page._ws.recv())
        if reply.get("id") == page._next:
            if "error" in reply:
                raise AssertionError(f"{method}: {reply['error']}")
            return reply.get("result", {})
        page.events.append(reply)


class chromium:  # noqa: N801 - used as a context manager, like open()
    """``with chromium(tmp_path) as page:`` a fresh headless browser and one blank page; the
    browser is stopped (by its own pid) on exit. A missing ``chromium`` is a skip, which
    ``CLOSUREPACK_REQUIRE_TOOLS=1`` turns into a failure."""

    def __init__(self, tmp: Path) -> None:
        self._tmp = tmp

    def __enter__(self) -> Page:
        exe = shutil.which("chromium")
        if exe is None:
            pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
        profile = self._tmp / "chromium-profile"
        profile.mkdir()
        self._log = (self._tmp / "chromium.log").open("wb")
        self._proc = subprocess.Popen(
            [exe, *_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (active.exists() and len(active.read_text().split()) >= 2):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                log = (self._tmp / "chromium.log").read_text(errors="replace")[-2000:]
                raise AssertionError(f"chromium did not start its DevTools endpoint: {log}")
            time.sleep(0.1)
        port, path = active.read_text().split()[:2]
        self._ws = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=60)
        browser = Page(self._ws, "")
        target = _send(browser, "Target.createTarget", {"url": "about:blank"}, None)
        attached = _send(
            browser,
            "Target.attachToTarget",
            {"targetId": target["targetId"], "flatten": True},
            None,
        )
        page = Page(self._ws, attached["sessionId"])
        page._next = browser._next
        return page

    def __exit__(self, *exc: object) -> None:
        ws = getattr(self, "_ws", None)
        if ws is not None:
            ws.close()
        self._proc.terminate()
        try:
            self._proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._log.close()
