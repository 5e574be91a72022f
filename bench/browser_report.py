"""Open a run's report.html in a real headless browser and take a full-page screenshot.

Checks what a parser cannot: that the page renders offline in Chromium (Debian's
``chromium`` package: ``apt-get install -y chromium``). The browser runs with networking
blocked (a proxy that does not exist), so a page that needed a remote script, style or
font would show it broken.

    python bench/browser_report.py runs/quickstart/report.html --out /tmp/report.png
    python bench/browser_report.py runs/quickstart            # RUN/report.html

Prints the screenshot's path and size; exits non-zero when no browser is found or the
screenshot is missing or blank.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser(name: str | None) -> str:
    for candidate in ([name] if name else BROWSERS):
        path = shutil.which(candidate)
        if path:
            return path
    sys.exit(f"no browser found (tried {', '.join([name] if name else BROWSERS)}); "
             "install Debian's: apt-get install -y chromium")


def screenshot(page: Path, out: Path, *, browser: str, width: int, height: int, timeout: int) -> None:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={profile}", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
               f"--window-size={width},{height}", f"--screenshot={out}", page.resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not out.is_file():
        sys.exit(f"{browser} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")


def blank(out: Path) -> bool:
    from PIL import Image

    with Image.open(out) as im:
        lo, hi = im.convert("L").getextrema()
    return lo == hi


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("page", type=Path, help="report.html, or a run directory holding one")
    ap.add_argument("--out", type=Path, default=None, help="PNG to write (default: beside the page)")
    ap.add_argument("--browser", default=None)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=6000, help="tall enough for the whole report")
    ap.add_argument("--timeout", type=int, default=120)
    args = ap.parse_args(argv)
    page = args.page / "report.html" if args.page.is_dir() else args.page
    if not page.is_file():
        sys.exit(f"{page} not found (write it with `diffret report RUN`)")
    out = args.out or page.with_name("report-screenshot.png")
    screenshot(page, out, browser=find_browser(args.browser), width=args.width, height=args.height,
               timeout=args.timeout)
    if blank(out):
        sys.exit(f"{out} is blank: the page did not render")
    from PIL import Image

    with Image.open(out) as im:
        print(f"{out} {im.size[0]}x{im.size[1]}")


if __name__ == "__main__":
    main()
