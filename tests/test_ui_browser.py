"""The forewarn page as a person sees it: a real Airflow 3 API server (with the project's plugins
folder) on loopback, the embedded stack behind it, and Debian's Chromium driven headless by
Playwright. Opens the page from Airflow's navigation and checks what is on the screen, then
clicks through it as a person would: paging, search, a roll-up filter, a parent's series view and
the drill-down to a child, and an incident's view. ``FOREWARN_UI_SCREENSHOTS_DIR`` (e.g. docs)
writes a screenshot of each view there."""

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
SCREENSHOTS_DIR = os.environ.get("FOREWARN_UI_SCREENSHOTS_DIR")  # e.g. docs: forewarn-{page,series,incident}.png


def _screenshot(page, name: str) -> None:
    if SCREENSHOTS_DIR:
        page.screenshot(path=str(Path(SCREENSHOTS_DIR) / f"forewarn-{name}.png"), full_page=True)


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
    flagged = seed_page(settings, clients.s3, rollups=True)
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
        browser = _launch(pw)
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
            expect(frame.locator("#open-count")).to_have_text("2")
            expect(frame.locator("#resolved-count")).to_have_text("1")
            expect(frame.locator("figure")).to_have_count(24)  # a page of the 29 series-metrics
            expect(frame.locator("figure figcaption").first).to_have_text("orders.count · event_count")
            # the band, the forecast and the actuals are drawn, with the anomalous buckets marked
            for shape in ("polygon.band", "polyline.mean", "polyline.actual"):
                expect(frame.locator(f"figure svg {shape}")).to_have_count(24)
            expect(frame.locator("svg circle.anomaly")).to_have_count(flagged)  # every falling series is on the first page
            box = frame.locator("figure svg polygon.band").first.bounding_box()
            assert box and box["width"] > 300 and box["height"] > 5  # really on screen, not collapsed
            rows = frame.locator("tr.incident-row")
            expect(rows).to_have_count(3)
            expect(rows.first).to_contain_text("open")
            expect(rows.first).to_contain_text("dropped below its forecast")
            if SCREENSHOT:
                page.screenshot(path=SCREENSHOT, full_page=True)
            _screenshot(page, "page")
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


def _launch(pw):
    """Headless Chromium (Debian's, or FOREWARN_CHROMIUM)."""
    return pw.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                              args=["--no-sandbox", "--disable-dev-shm-usage"])


def _open_page(browser, base: str):
    """A browser page on the forewarn page inside the Airflow UI (logged in), and its frame."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{base}/", wait_until="networkidle")
    page.goto(f"{base}/plugin/forewarn", wait_until="networkidle")
    frame = page.frame_locator("iframe")
    expect(frame.locator("h1")).to_have_text("forewarn", timeout=60_000)
    return page, frame


@pytest.mark.stack
@pytest.mark.timeout(600)
def test_paging_search_a_rollup_filter_the_drill_down_and_an_incidents_view(airflow_ui):
    from playwright.sync_api import expect, sync_playwright

    base, _ = airflow_ui
    with sync_playwright() as pw:
        browser = _launch(pw)
        try:
            page, frame = _open_page(browser, base)
            figures, captions = frame.locator("figure"), frame.locator("figure figcaption")
            # paging: 29 series-metrics, 24 a page
            expect(frame.locator("#paging")).to_contain_text("series-metrics 1–24 of 29")
            frame.get_by_role("link", name="next »").click()
            expect(frame.locator("#paging")).to_contain_text("series-metrics 25–29 of 29", timeout=30_000)
            expect(figures).to_have_count(5)
            frame.get_by_role("link", name="« previous").click()
            expect(figures).to_have_count(24, timeout=30_000)
            # a search, then a roll-up filter on top of it
            frame.get_by_role("searchbox", name="search series").fill("sales")
            frame.get_by_role("button", name="search").click()
            expect(figures).to_have_count(5, timeout=30_000)
            expect(captions.first).to_have_text("sales.count · event_count")
            frame.get_by_role("textbox", name="roll-up filter").fill("region=eu")
            frame.get_by_role("button", name="search").click()
            expect(frame.locator("#dim-filter")).to_contain_text("region=eu", timeout=30_000)
            expect(figures).to_have_count(1)
            expect(captions.first).to_have_text("sales.count/region=eu · event_count")
            # the child's series view links back to its parent: the drill-down
            captions.first.get_by_role("link").click()
            expect(frame.locator("h1")).to_have_text("sales.count/region=eu · event_count", timeout=30_000)
            expect(frame.locator("#rollup-of")).to_contain_text("a roll-up of sales.count for region=eu")
            frame.locator("#rollup-of").get_by_role("link", name="sales.count").click()
            expect(frame.locator("h1")).to_have_text("sales.count · event_count", timeout=30_000)
            expect(frame.locator("figure svg polyline.actual")).to_have_count(1)
            expect(frame.locator("figure svg rect.episode")).to_have_count(1)
            expect(frame.locator("figure svg rect.label")).to_have_count(1)
            region = frame.locator("table.children[data-keys='region'] tr.child")
            expect(region).to_have_count(2)
            expect(region.first).to_contain_text("region=eu")
            expect(region.first).to_contain_text("100%")
            expect(frame.locator("table.children[data-keys='channel'] tr.child")).to_have_count(2)
            expect(frame.locator("#drilldown")).to_be_visible()
            _screenshot(page, "series")
            region.first.get_by_role("link", name="region=eu").click()
            expect(frame.locator("h1")).to_have_text("sales.count/region=eu · event_count", timeout=30_000)
            frame.get_by_role("link", name="sales.count", exact=True).first.click()
            expect(frame.locator("h1")).to_have_text("sales.count · event_count", timeout=30_000)
            # the parent's incident: its facts, where it happened, the series that joined it
            frame.locator("#series-incidents a.incident-link").first.click()
            expect(frame.locator("h1")).to_have_text("Incident: sales.count · event_count", timeout=30_000)
            expect(frame.locator("#facts")).to_contain_text("100% region=eu")
            expect(frame.locator("#facts")).to_contain_text("dropped below its forecast")
            expect(frame.locator("#related li")).to_have_count(3)
            expect(frame.locator("figure svg polyline.actual")).to_have_count(1)
            expect(frame.locator("form.ack")).to_have_count(1)
            _screenshot(page, "incident")
            frame.locator("#related").get_by_role("link", name="sales.count/channel=app").click()
            expect(frame.locator("h1")).to_have_text("sales.count/channel=app · event_count", timeout=30_000)
        finally:
            browser.close()
