"""Screenshots of web pages in headless Chromium (Debian's), driven over the DevTools protocol:
load the page, wait until a JavaScript condition holds (the page has drawn what we want), capture.
A fixed time budget is not enough for pages that draw after their data arrives."""
from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import websockets

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--remote-debugging-port=0"]
SIZE = (1600, 1100)


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                       "--no-install-recommends chromium", shell=True, check=True, stdout=subprocess.DEVNULL)
        found = shutil.which("chromium")
    if found is None:
        sys.exit("screenshots: no chromium on PATH (Debian: apt-get install chromium)")
    return found


class DevTools:
    """One page's DevTools connection: numbered calls, each awaited for its own answer."""

    def __init__(self, ws):
        self.ws, self.ids = ws, itertools.count(1)

    async def call(self, method: str, **params) -> dict:
        i = next(self.ids)
        await self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(await self.ws.recv())
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    async def until(self, condition: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = await self.call("Runtime.evaluate", expression=condition, returnByValue=True)
            if answer.get("result", {}).get("value") is True:
                return True
            await asyncio.sleep(0.2)
        return False


def devtools_port(profile: Path, proc: subprocess.Popen, timeout: float = 30) -> int:
    active = profile / "DevToolsActivePort"  # Chromium writes the port it chose here
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if active.exists() and active.read_text().strip():
            return int(active.read_text().split()[0])
        time.sleep(0.05)
    sys.exit("screenshots: chromium opened no DevTools port")


async def _capture(page: str, url: str, out: Path, drawn: str, timeout: float) -> bool:
    async with websockets.connect(page, max_size=64 << 20) as ws:
        tools = DevTools(ws)
        await tools.call("Page.enable")
        await tools.call("Emulation.setDeviceMetricsOverride", width=SIZE[0], height=SIZE[1],
                         deviceScaleFactor=1, mobile=False)
        await tools.call("Page.navigate", url=url)
        ok = await tools.until(drawn, timeout)
        await tools.call("Runtime.evaluate", expression="document.activeElement.blur(); window.scrollTo(0, 0)")
        await asyncio.sleep(1.0)  # the last paint
        shot = await tools.call("Page.captureScreenshot", format="png")
        out.write_bytes(base64.b64decode(shot["data"]))
        return ok


def screenshot(url: str, out: Path, drawn: str, timeout: float = 60) -> None:
    """Saves ``url`` as a PNG once the JavaScript expression ``drawn`` is true; exits if it never is."""
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.Popen([chromium(), *FLAGS, f"--user-data-dir={profile}",
                                 f"--window-size={SIZE[0]},{SIZE[1]}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port = devtools_port(Path(profile), proc)
            pages = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
            page = next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page")
            ok = asyncio.run(_capture(page, url, out, drawn, timeout))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    if not ok:
        sys.exit(f"screenshots: {url} did not draw ({drawn}) within {timeout} s; {out} shows how far it got")
    print(f"saved {out}")
