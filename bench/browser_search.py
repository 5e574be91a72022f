"""Check ``diffret serve`` in a real headless browser: type a query, take a screenshot.

1. renders the ``synthetic`` test videos of a prepared dataset into MP4 files (a stand-in
   for "your own videos": real files in a real container, one per video);
2. ``diffret index build --videos`` over them with a trained checkpoint;
3. ``diffret serve`` on a free 127.0.0.1 port;
4. Chromium (Debian's ``chromium``) driven over the DevTools protocol on a pipe: open the
   page, focus the query box, type the query key by key, press Enter, wait until the
   result strips have loaded, save a PNG. Networking is blocked in the browser (a proxy
   that does not exist; only loopback bypasses it), so a page that needed anything remote would
   show it broken.

    python bench/browser_search.py --checkpoint runs/quickstart --out /tmp/search.png
    python bench/browser_search.py --checkpoint runs/quickstart --query "a blue star spins" --videos 60

Prints the screenshot's path, the number of results on the page and the server's JSON
for the same query; exits non-zero if the browser shows no results.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def write_mp4(frames, path: Path, *, scale: int = 3, fps: int = 1) -> None:
    """uint8 [T,H,W,3] frames -> an H.264 MP4, each frame shown 1/fps seconds."""
    import av
    import numpy as np

    big = np.repeat(np.repeat(frames, scale, axis=1), scale, axis=2)
    h, w = big.shape[1] // 2 * 2, big.shape[2] // 2 * 2
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for f in big:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f[:h, :w]), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def demo_videos(out: Path, *, data_root, count: int) -> list[str]:
    from diffret_cli.data.manifest import PreparedDataset

    sp = PreparedDataset.open(data_root, "synthetic").split("test")
    out.mkdir(parents=True, exist_ok=True)
    captions = []
    for v in sp.videos[:count]:
        frames, _ = sp.frames(v.video_id)
        write_mp4(frames, out / f"{v.video_id}.mp4")
        captions.append(v.captions[0])
    return captions


class Chrome:
    """Chromium with the DevTools protocol on a pipe (fd 3 in, fd 4 out; NUL-separated JSON)."""

    def __init__(self, browser: str, profile: str, width: int, height: int):
        to_child_r, self._w = os.pipe()
        self._r, from_child_w = os.pipe()

        def remap():  # the protocol's fixed descriptors (dup2 leaves them inheritable)
            r, w = os.dup(to_child_r), os.dup(from_child_w)  # out of the way of 3 and 4
            os.dup2(r, 3)
            os.dup2(w, 4)

        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--remote-debugging-pipe",
               f"--user-data-dir={profile}", "--proxy-server=127.0.0.1:9",  # loopback bypasses it by default
               f"--window-size={width},{height}", "about:blank"]
        # close_fds=False: the close would run after remap() and take 3 and 4 with it
        self.proc = subprocess.Popen(cmd, preexec_fn=remap, close_fds=False,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf, self._id, self.session = b"", 0, None

    def send(self, method: str, params: dict | None = None, timeout: float = 60.0) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if self.session:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        end = time.time() + timeout
        while time.time() < end:
            while b"\0" not in self._buf:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise RuntimeError("the browser closed its DevTools pipe")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
        raise TimeoutError(method)

    def eval(self, expr: str):
        return self.send("Runtime.evaluate", {"expression": expr, "returnByValue": True})["result"].get("value")

    def wait(self, expr: str, timeout: float = 120.0) -> None:
        end = time.time() + timeout
        while time.time() < end:
            if self.eval(expr):
                return
            time.sleep(0.2)
        raise TimeoutError(expr)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a run trained on `synthetic` (the quickstart)")
    ap.add_argument("--data-root", default=None, help="where `synthetic` is prepared")
    ap.add_argument("--query", default="a big yellow triangle expands, and then a big green triangle falls")
    ap.add_argument("--videos", type=int, default=40, help="test videos rendered into the demo folder")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the demo folder and index here")
    ap.add_argument("--out", type=Path, default=Path("search.png"))
    ap.add_argument("--width", type=int, default=1100)
    ap.add_argument("--height", type=int, default=1000)
    ap.add_argument("--browser", default=None)
    a = ap.parse_args(argv)
    browser = next((shutil.which(b) for b in ([a.browser] if a.browser else BROWSERS) if shutil.which(b)), None)
    if not browser:
        sys.exit("no browser found; install Debian's: apt-get install -y chromium")

    work = a.workdir or Path(tempfile.mkdtemp(prefix="diffret-browser-search-"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if a.data_root:
        env["DIFFRET_DATA_ROOT"] = str(a.data_root)
    diffret = [sys.executable, "-m", "diffret_cli.cli.main"]
    index = work / "demo.index"
    if not (index / "index.json").is_file():
        demo_videos(work / "videos", data_root=a.data_root, count=a.videos)
        subprocess.run([*diffret, "index", "build", "--checkpoint", str(a.checkpoint), "--videos", str(work / "videos"),
                        "--out", str(index)], check=True, env=env)
    port = free_port()
    server = subprocess.Popen([*diffret, "serve", str(index), "--port", str(port)], env=env,
                              stdout=subprocess.PIPE, text=True)
    profile = tempfile.mkdtemp(prefix="diffret-chrome-")
    chrome = None
    try:
        server.stdout.readline()  # "serving ... at http://127.0.0.1:PORT/"
        url = f"http://127.0.0.1:{port}/"
        chrome = Chrome(browser, profile, a.width, a.height)
        target = chrome.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        chrome.session = chrome.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        chrome.send("Emulation.setDeviceMetricsOverride",
                    {"width": a.width, "height": a.height, "deviceScaleFactor": 1, "mobile": False})
        chrome.send("Page.navigate", {"url": url})
        chrome.wait("document.readyState === 'complete' && !!document.getElementById('q')")
        chrome.wait("!document.getElementById('info').textContent.startsWith('loading')")
        chrome.eval("document.getElementById('q').focus()")
        for ch in a.query:  # typed key by key, as a user would
            chrome.send("Input.dispatchKeyEvent", {"type": "keyDown", "text": ch, "key": ch})
            chrome.send("Input.dispatchKeyEvent", {"type": "keyUp", "key": ch})
        enter = {"key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13, "nativeVirtualKeyCode": 13}
        chrome.send("Input.dispatchKeyEvent", {"type": "keyDown", "text": "\r", **enter})
        chrome.send("Input.dispatchKeyEvent", {"type": "keyUp", **enter})
        chrome.wait("document.querySelectorAll('#results li').length > 0 && "
                    "[...document.images].every(i => i.complete && i.naturalWidth > 0)")
        typed = chrome.eval("document.getElementById('q').value")
        shown = chrome.eval("[...document.querySelectorAll('#results .id')].map(e => e.textContent)")
        png = chrome.send("Page.captureScreenshot", {"format": "png"})["data"]
        a.out.write_bytes(base64.b64decode(png))
        with urllib.request.urlopen(f"{url}api/search?q={urllib.parse.quote(a.query)}&top=10") as r:
            api = json.loads(r.read())
        print(json.dumps({"screenshot": str(a.out), "bytes": a.out.stat().st_size, "typed": typed,
                          "results_on_page": shown, "api_ids": [h["id"] for h in api["results"]]}, indent=2))
        if typed != a.query or not shown or shown != [h["id"] for h in api["results"]]:
            sys.exit("the page does not show the API's results for the typed query")
    finally:
        if chrome:
            chrome.close()
        server.terminate()
        server.wait()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
