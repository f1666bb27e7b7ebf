"""The forewarn page as a person sees it: a real Airflow 3 API server (with the project's plugins
folder) on loopback, the embedded stack behind it, and Debian's Chromium driven headless by
Playwright. Opens the page from Airflow's navigation and checks what is on the screen."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from forewarn.local.airflow import PROJECT_ROOT, airflow_bin, stop_group

from conftest import free_port
from helpers import fresh_settings, seed_page

CHROMIUM = os.environ.get("FOREWARN_CHROMIUM", "/usr/bin/chromium")
SCREENSHOT = os.environ.get("FOREWARN_UI_SCREENSHOT")  # e.g. docs/forewarn-page.png


def _wait(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the API server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback URL built here
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"the API server did not answer {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def airflow_ui(clients, aws_stack, airflow_db, tmp_path_factory):
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail(f"Chromium not found at {CHROMIUM}: `make test` installs Debian's chromium package "
                    "(or set FOREWARN_CHROMIUM to a Chromium binary)")
    settings = fresh_settings(clients)
    flagged = seed_page(settings, clients.s3)
    port = free_port()
    log = tmp_path_factory.mktemp("api-server") / "api-server.log"
    env = {k: v for k, v in os.environ.items() if k != "AIRFLOW__CORE__UNIT_TEST_MODE"}
    env.update({
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "FOREWARN_BUCKET": settings.bucket,
    })
    with log.open("wb") as handle:
        proc = subprocess.Popen(  # noqa: S603 - the venv's airflow
            [airflow_bin(), "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(f"{base}/api/v2/monitor/health", proc, log)
        yield base, flagged
    finally:
        stop_group(proc, timeout=30)


@pytest.mark.stack
@pytest.mark.timeout(600)
def test_forewarn_page_in_the_airflow_ui(airflow_ui):
    from playwright.sync_api import expect, sync_playwright

    base, flagged = airflow_ui
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/", wait_until="networkidle")
            # the navigation offers the page, and following it shows it inside Airflow
            link = page.get_by_test_id("nav-sidebar").get_by_role("link", name="forewarn", exact=True)
            expect(link).to_be_visible(timeout=60_000)
            link.click()
            page.wait_for_url("**/plugin/forewarn", timeout=60_000)
            frame = page.frame_locator("iframe")
            expect(frame.locator("h1")).to_have_text("forewarn", timeout=60_000)
            expect(frame.locator("#open-count")).to_have_text("1")
            expect(frame.locator("#resolved-count")).to_have_text("1")
            expect(frame.locator("figure")).to_have_count(2)
            expect(frame.locator("figure figcaption").first).to_have_text("orders.count · event_count")
            # the band, the forecast and the actuals are drawn, with the anomalous buckets marked
            for shape in ("polygon.band", "polyline.mean", "polyline.actual"):
                expect(frame.locator(f"figure svg {shape}")).to_have_count(2)
            expect(frame.locator("svg circle.anomaly")).to_have_count(flagged)
            box = frame.locator("figure svg polygon.band").first.bounding_box()
            assert box and box["width"] > 300 and box["height"] > 5  # really on screen, not collapsed
            rows = frame.locator("tr.incident-row")
            expect(rows).to_have_count(2)
            expect(rows.first).to_contain_text("open")
            expect(rows.first).to_contain_text("dropped below its forecast")
            if SCREENSHOT:
                page.screenshot(path=SCREENSHOT, full_page=True)
            # the open incident's evidence: the interval that started it, that series' rows
            rows.first.get_by_role("link", name="evidence").click()
            expect(frame.locator("h1")).to_have_text("Evidence", timeout=30_000)
            expect(frame.locator("#evidence tr.open")).to_have_count(1)
            expect(frame.locator("#evidence")).to_contain_text("orders.count")
            expect(frame.locator("#evidence")).not_to_contain_text("payments.value")
            # back on the page, the open incident is acknowledged through Airflow's own auth (edit permission)
            frame.get_by_role("link", name="back").click()
            expect(frame.locator("h1")).to_have_text("forewarn", timeout=30_000)
            ack = frame.locator("tr.incident-row form.ack").first
            ack.locator("input[name='note']").fill("on it")
            ack.get_by_role("button", name="acknowledge").click()
            expect(frame.locator("h1")).to_have_text("Done", timeout=30_000)
            expect(frame.locator("#done")).to_contain_text("acknowledged by")
            expect(frame.locator("#done")).to_contain_text(": on it")
        finally:
            browser.close()
