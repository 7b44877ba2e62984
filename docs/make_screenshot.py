"""Make docs/demo.png, the README's picture of ``line-markread demo --html``.

Runs the demo (seed 7) into a page in a temporary folder and photographs its
top with Debian's headless Chromium (``make chromium`` installs it):

    python docs/make_screenshot.py [OUTPUT.png] [--height PIXELS]

Nothing is fetched: the page is one self-contained file.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from line_markread._cli import main as line_markread

HERE = Path(__file__).resolve().parent
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", default=str(HERE / "demo.png"))
    parser.add_argument("--height", type=int, default=1480, help="pixels of the page to show")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("chromium is not installed: run `make chromium`", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as folder:
        page = Path(folder) / "demo.html"
        with (
            open(os.devnull, "w") as sink,
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(sink),
        ):
            if line_markread(["demo", "--json", "--html", str(page)]) != 0:
                print("the demo failed: no screenshot", file=sys.stderr)
                return 1
        output = Path(args.output).resolve()
        done = subprocess.run(
            [
                browser,
                *FLAGS,
                f"--user-data-dir={Path(folder) / 'profile'}",
                f"--window-size=1240,{args.height}",
                f"--screenshot={output}",
                page.as_uri(),
            ],
            capture_output=True,
            timeout=180,
            check=False,
        )
    if done.returncode != 0 or not output.exists():
        print(done.stderr.decode(errors="replace")[-2000:], file=sys.stderr)
        return 1
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
