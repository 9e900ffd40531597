"""The app in a real browser: its server as a child process, and headless Chromium driving the page.

Used by ``tests/test_app.py`` and :mod:`utils.app.screenshot`. Chromium and its driver are the system's
(Debian: ``apt-get install -y chromium chromium-driver``), passed to Selenium by path, so Selenium Manager never
downloads anything. Every wait is on a condition with a deadline (the server answering, the upload listed, the
status line changing), never a fixed sleep; the server runs in a session of its own and :func:`serve` kills
that whole session on the way out, whatever happened.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from utils.app.elements import IDS
from utils.processes import stop_session

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("/usr/bin/chromedriver", "chromedriver")
INSTALL_BROWSER = "apt-get install -y chromium chromium-driver (Debian/Ubuntu, as root)"
START_TIMEOUT = 90.0    # seconds for the server to answer (Python, torch and Gradio imports on a slow machine)
RESTORE_TIMEOUT = 60.0  # seconds for one restore to show in the page
# The status line's first words once a request is answered (utils.app.restore.restore_for_page).
ANSWERED = ("Restored", "Cannot restore", "Nothing to restore")


def find_browser() -> tuple[str | None, str | None]:
    """``(chromium, chromedriver)`` paths, each None when not installed."""
    browser = next((p for p in map(shutil.which, BROWSERS) if p), None)
    driver = next((p for p in map(shutil.which, DRIVERS) if p), None)
    return browser, driver


def missing_for_browser_test() -> str | None:
    """Why the browser cannot be driven here (a missing package or program, with how to install it), else None."""
    for package in ("selenium", "gradio"):
        if importlib.util.find_spec(package) is None:
            return f"{package} is not installed: make app (or pip install -r requirements-app.txt)"
    browser, driver = find_browser()
    if browser is None or driver is None:
        return f"{'chromium' if browser is None else 'chromedriver'} is not installed: {INSTALL_BROWSER}"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def serve(argv: list[str], log: Path, cwd: str | os.PathLike | None = None, env: dict[str, str] | None = None,
          timeout: float = START_TIMEOUT) -> Iterator[str]:
    """Run ``python -m utils.app ARGV --port <free>`` and yield its URL once the page answers.

    Output goes to ``log`` (read back into the error when the server exits or never answers). On leaving, the
    server's session is stopped (SIGTERM, then SIGKILL), also after an error or an interrupt.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "utils.app", *argv, "--port", str(port)], cwd=cwd,
                                env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not _answers(url):
            if proc.poll() is not None:
                raise RuntimeError(f"the app exited with status {proc.returncode} before serving:\n"
                                   f"{log.read_text(errors='replace')[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the app did not answer at {url} within {timeout:.0f} s:\n"
                                   f"{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)  # polling interval of the condition above, not a wait for an event
        yield url
    finally:
        stop_session(proc)


@contextmanager
def headless_chromium(width: int = 1280, height: int = 1000, page_timeout: float = 60.0):
    """A headless Chromium WebDriver (system browser and driver); quit on the way out."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    browser, driver_path = find_browser()
    if browser is None or driver_path is None:
        raise RuntimeError(f"Chromium and its driver are needed: {INSTALL_BROWSER}")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--disable-extensions", "--no-first-run", "--disable-background-networking",
                 f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.set_page_load_timeout(page_timeout)
        driver.set_script_timeout(page_timeout)
        yield driver
    finally:
        driver.quit()


def wait_until(driver, condition: Callable, timeout: float, what: str):
    """``condition(driver)``'s first truthy value within ``timeout`` s; a ``TimeoutError`` saying ``what`` and
    the page's status line otherwise. An element missing, replaced or covered while the page re-renders
    counts as "not yet"."""
    from selenium.common.exceptions import (
        ElementClickInterceptedException,
        NoSuchElementException,
        StaleElementReferenceException,
        TimeoutException,
    )
    from selenium.webdriver.support.ui import WebDriverWait
    transient = (NoSuchElementException, StaleElementReferenceException, ElementClickInterceptedException)
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=transient).until(condition)
    except TimeoutException:
        raise TimeoutError(f"{what} did not happen within {timeout:.0f} s; the status line says: "
                           f"{status_text(driver)!r}") from None


def element(driver, role: str, css: str = ""):
    """The element of ``role`` (:data:`utils.app.elements.IDS`), or the first ``css`` match inside it."""
    from selenium.webdriver.common.by import By
    return driver.find_element(By.CSS_SELECTOR, f"#{IDS[role]} {css}".strip())


def status_text(driver) -> str:
    """The page's status line as shown, its white space collapsed (the browser breaks lines around code)."""
    from selenium.common.exceptions import WebDriverException
    try:
        return " ".join(element(driver, "status").text.split())
    except WebDriverException:
        return "(no status line)"


def open_page(driver, url: str, timeout: float = START_TIMEOUT) -> None:
    """Load the page and wait until its Restore button is there (Gradio renders the page in the browser)."""
    from selenium.webdriver.common.by import By
    driver.get(url)
    wait_until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f"#{IDS['restore']}"), timeout,
               "the page rendering its Restore button")


def restore_in_page(driver, image: str | os.PathLike, timeout: float = RESTORE_TIMEOUT) -> str:
    """Upload ``image`` through the page's file input, wait until it is listed, press Restore, and return the
    status line once the request is answered (``Restored ...``, or ``Cannot restore ...`` with the reason)."""
    from selenium.webdriver.common.by import By
    image = Path(image).resolve()
    before = status_text(driver)
    element(driver, "upload", "input[type=file]").send_keys(str(image))
    wait_until(driver, lambda d: image.name in file_links(d, "upload"), timeout,
               f"the upload of {image.name} being listed")
    wait_until(driver, lambda d: d.find_element(By.CSS_SELECTOR, f"#{IDS['restore']}").click() or True, timeout,
               "the Restore button taking a click")

    def answered(d) -> str | None:
        text = status_text(d)
        return text if text != before and text.startswith(ANSWERED) else None
    return wait_until(driver, answered, timeout, f"the restore of {image.name} being answered")


def shown_images(driver, role: str) -> list[str]:
    """The ``src`` of every image the element of ``role`` shows (the slider: input, then restored)."""
    from selenium.webdriver.common.by import By
    return [img.get_attribute("src") for img in element(driver, role).find_elements(By.CSS_SELECTOR, "img")
            if img.get_attribute("src")]


def file_links(driver, role: str) -> dict[str, str]:
    """The files a file element of ``role`` lists once uploaded or returned: ``{file name: URL}``."""
    from selenium.webdriver.common.by import By
    links = element(driver, role).find_elements(By.CSS_SELECTOR, "a[href][download]")
    return {a.get_attribute("download"): a.get_attribute("href") for a in links}


def download_link(driver) -> str:
    """The URL of the restored PNG the page offers for download."""
    links = file_links(driver, "download")
    if len(links) != 1:
        raise ValueError(f"the page offers {len(links)} files to download, not one: {sorted(links)}")
    return next(iter(links.values()))


def fetch(url: str, timeout: float = 30.0) -> bytes:
    """The bytes the server sends for ``url``."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()
