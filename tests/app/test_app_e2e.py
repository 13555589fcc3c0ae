"""End to end: ``detrkit app`` on 127.0.0.1, headless Chromium uploads an image, we take a screenshot.

Chromium and chromedriver (Debian packages ``chromium``, ``chromium-driver``) are installed with
apt-get when missing and possible; otherwise the test is skipped with the reason. The screenshot
goes to ``$DETRKIT_SCREENSHOT_DIR`` when set (to look at it), else to the test's temp folder.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .test_app_process import _processes_serving

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1700",
]


def _ensure_chromium() -> tuple[str, str]:
    chrome, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chrome and driver:
        return chrome, driver
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("chromium/chromium-driver missing and cannot be installed (no apt-get or not root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"],
            env=env,
            capture_output=True,
            timeout=600,
            check=True,
        )
    except (subprocess.SubprocessError, OSError) as err:
        pytest.skip(f"chromium/chromium-driver missing and apt-get install failed: {type(err).__name__}")
    chrome, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chrome and driver):
        pytest.skip("apt-get ran but chromium/chromedriver are still not on PATH")
    return chrome, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(
                f"detrkit app exited with {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} not healthy after {timeout:.0f} s")


def _model_for_demo(app_checkpoint: Path) -> Path:
    from detrkit.aerial.default_model import SHIPPED

    return SHIPPED if SHIPPED.is_file() else app_checkpoint


def test_upload_in_headless_chromium(app_checkpoint: Path, tmp_path: Path) -> None:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    chrome, driver_path = _ensure_chromium()
    from detrkit.aerial.synth import render_tile

    image = tmp_path / "upload.png"
    Image.fromarray(render_tile(np.random.default_rng(21), 384, 0.4)[0]).save(image)
    port = _free_port()
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "detrkit.cli.main",
            "app",
            "--port",
            str(port),
            "--model",
            str(_model_for_demo(app_checkpoint)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    driver = None
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/_stcore/health", server, 120)
        options = webdriver.ChromeOptions()
        options.binary_location = chrome
        for flag in CHROME_FLAGS + [f"--user-data-dir={tmp_path / 'chrome-profile'}"]:
            options.add_argument(flag)
        service = webdriver.ChromeService(executable_path=driver_path)
        driver = webdriver.Chrome(options=options, service=service)
        driver.set_page_load_timeout(60)
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 180)
        upload = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[type='file']")))
        upload.send_keys(str(image))
        wait.until(ec.presence_of_element_located((By.XPATH, "//*[contains(text(), 'Built-up area')]")))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "[data-testid='stImage'] img")) >= 2)
        wait.until(
            lambda d: all(
                img.get_property("complete") and img.get_property("naturalWidth") > 0
                for img in d.find_elements(By.CSS_SELECTOR, "[data-testid='stImage'] img")
            )
        )
        words = ("Built-up area", "Built-up share", "Buildings", "GSD", "Download GeoJSON", "Download CSV")
        wait.until(lambda d: all(w in d.find_element(By.TAG_NAME, "body").text for w in words))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid='stDataFrame']"))
        time.sleep(3.0)  # let the layout settle (fonts, data frame canvas)
        text = driver.find_element(By.TAG_NAME, "body").text
        assert "error" not in text.lower()
        shot_dir = Path(os.environ.get("DETRKIT_SCREENSHOT_DIR", tmp_path))
        shot_dir.mkdir(parents=True, exist_ok=True)
        shot = shot_dir / "app_e2e.png"
        driver.save_screenshot(str(shot))
        pixels = np.asarray(Image.open(shot).convert("RGB"))
        assert pixels.shape[0] > 500 and pixels.shape[1] > 800 and pixels.std() > 10
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    time.sleep(1.0)
    assert _processes_serving(port) == [], "a process of the app survived SIGTERM"
