"""The status page in a real browser: Debian's Chromium driven by Playwright, loading the page from a
running gateway (real DICOM traffic) and reading the numbers it shows."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_ops_metrics import CT, site_yaml
from waiting import free_port, wait_for

from dicom_node.gateway import Gateway
from dicom_node.receiver import Receiver
from dicom_node.storescu import send_files
from miadmark.config import load_config

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")
    if not CHROMIUM.exists() or shutil.which("chromium") is None:
        pytest.skip("no /usr/bin/chromium: run .ci/install-ops.sh (Debian package chromium)")
    with playwright.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield b
        b.close()




def test_status_page_shows_queue_deliveries_and_failures(tmp_path, site_keys, browser):
    rx_port = free_port()
    cfg_path = site_yaml(tmp_path, site_keys, gw_port=0, rx_port=rx_port, gw_metrics=0, rx_metrics=0)
    gw = Gateway(load_config(cfg_path)).start()  # the research node is down: retries, then it comes up
    rx = None
    try:
        assert send_files("127.0.0.1", gw.port, CT[:3], called_ae="ARCHIVE", calling_ae="PACS") == [0] * 3
        assert send_files("127.0.0.1", gw.port, CT[3:4], called_ae="NOWHERE", calling_ae="PACS") == [0x0124]
        assert wait_for(lambda: gw.queue.retries().get("research", (0, 0))[0] == 3)
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{gw.monitor.port}/")
        row = page.locator('#queue tr[data-destination="research"]')
        assert row.locator('[data-key="pending"]').inner_text() == "3"
        assert row.locator('[data-key="health"]').inner_text() == "retrying"
        assert "association to RESEARCH@127.0.0.1" in row.locator('[data-key="last_error"]').inner_text()
        failures = page.locator("#failures")
        assert "blocked" in failures.inner_text() and "NOWHERE" not in page.content()  # UIDs and events only
        assert page.locator("#ready").inner_text() == "yes"

        rx = Receiver(load_config(cfg_path)).start()
        assert wait_for(lambda: gw.queue.counts()["research"]["done"] == 3)
        page.reload()
        row = page.locator('#queue tr[data-destination="research"]')
        assert row.locator('[data-key="done"]').inner_text() == "3"
        assert row.locator('[data-key="pending"]').inner_text() == "0"
        assert row.locator('[data-key="health"]').inner_text() == "ok"
        delivered = page.locator('#delivered [data-key="uid"]').all_inner_texts()
        import pydicom
        assert sorted(delivered) == sorted(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                                           for p in CT[:3])
        # auto-refresh: the browser reloads by itself
        assert page.locator('meta[http-equiv="refresh"]').get_attribute("content") == "5"
        page.close()
    finally:
        gw.stop()
        if rx is not None:
            rx.stop()
