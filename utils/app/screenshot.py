"""``python -m utils.app.screenshot``: ``figs/app.png``, the app's page after restoring a demo test image.

Serves the demo's checkpoint (``checkpoint/demo``, trained by ``make demo``) with :mod:`utils.app.main` in a
child process, restores one of the demo's degraded test images (a rainy one by default) in headless Chromium
(:mod:`utils.app.browser`), and saves the whole page as a PNG, reduced to 256 colours (and then smaller, if need
be) when it is over ``--max-kb``.

    python -m utils.app.screenshot [--model checkpoint/demo] [--image data/demo/test/derain/demo/input/x.png]
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

from PIL import Image

from utils.app import browser
from utils.app.main import DEMO_EXAMPLES
from utils.app.restore import example_images
from utils.cli import one_spelling
from utils.errors import OneLineArgumentParser, UserError, run_main

DEMO_MODEL = "checkpoint/demo"


def get_args_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="python -m utils.app.screenshot",
                                   description="screenshot of the app's page after a restore",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default=DEMO_MODEL, help="checkpoint to serve (make demo trains this one)")
    parser.add_argument("--image", default=None,
                        help=f"image to restore (default: the rainy example of {DEMO_EXAMPLES})")
    parser.add_argument("--out", default="figs/app.png", help="the screenshot")
    parser.add_argument("--width", type=int, default=1280, help="browser window width in pixels")
    parser.add_argument("--max-kb", type=int, default=400, help="largest file; bigger screenshots are reduced")
    return one_spelling(parser)


def default_image() -> Path:
    """The demo's rainy example (else its first), or a :class:`UserError` saying to run ``make demo``."""
    found = example_images(DEMO_EXAMPLES)
    if not found:
        raise UserError(f"no demo test images under {DEMO_EXAMPLES}/: run `make demo` first, or pass --image FILE")
    return next((p for p, label in found if label.startswith("derain")), found[0][0])


def shrink_png(png: bytes, max_bytes: int) -> tuple[bytes, str]:
    """``png`` re-encoded to fit ``max_bytes`` if it does not: 256 colours first, then 3/4 the size each time
    (down to a quarter); returns the bytes and what was done."""
    if len(png) <= max_bytes:
        return png, "as captured"
    image = Image.open(io.BytesIO(png)).convert("RGB")
    scale = 1.0
    while True:
        size = (round(image.width * scale), round(image.height * scale))
        reduced = image.resize(size, Image.Resampling.LANCZOS) if scale < 1 else image
        buf = io.BytesIO()
        reduced.quantize(256).save(buf, format="PNG", optimize=True)
        if buf.tell() <= max_bytes or scale < 0.3:
            how = "256 colours" + (f", scaled to {size[0]}x{size[1]}" if scale < 1 else "")
            return buf.getvalue(), how
        scale *= 0.75


def main(args) -> int:
    if not Path(args.model).exists():
        raise UserError(f"--model {args.model}: not found — run `make demo` (it trains {DEMO_MODEL}) or pass "
                        f"--model PATH")
    image = Path(args.image) if args.image else default_image()
    if not image.is_file():  # before a server and a browser are started for nothing
        raise UserError(f"--image {image}: no such file — pass an image file, or leave the flag out for the demo's")
    with tempfile.TemporaryDirectory(prefix="baryir-screenshot-") as tmp:
        log = Path(tmp) / "app.log"
        argv = ["--model", args.model, "--work-dir", str(Path(tmp) / "work")]
        with browser.serve(argv, log) as url, browser.headless_chromium(args.width, 1000) as driver:
            browser.open_page(driver, url)
            status = browser.restore_in_page(driver, image)
            if not status.startswith("Restored"):
                raise UserError(f"the page did not restore {image}: {status}")
            browser.wait_until(driver, _images_loaded, browser.RESTORE_TIMEOUT, "the result images loading")
            png = _whole_page(driver, args.width)
    data, how = shrink_png(png, args.max_kb * 1024)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    print(f"{out}: {len(data) / 1024:.0f} KB ({how}); {status}")
    return 0


def _page_height(driver) -> int:
    return int(driver.execute_script(
        "return Math.max(document.documentElement.scrollHeight, document.body.scrollHeight);"))


def _whole_page(driver, width: int, tries: int = 4) -> bytes:
    """A screenshot of the whole page: the viewport is made as tall as the page (Chrome's device metrics), again
    until the height it lays out at is the height it was given (a taller viewport may reflow the page)."""
    height = _page_height(driver)
    for _ in range(tries):
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        browser.wait_until(driver, _images_loaded, browser.RESTORE_TIMEOUT, "the resized page settling")
        laid_out = _page_height(driver)
        if laid_out <= height:
            break
        height = laid_out
    return driver.get_screenshot_as_png()


def _images_loaded(driver) -> bool:
    """Every image of the page is decoded (none still loading or broken)."""
    return driver.execute_script(
        "const imgs = Array.from(document.images);"
        "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);")


if __name__ == "__main__":
    cli_args = get_args_parser().parse_args()
    sys.exit(run_main(main, cli_args))
