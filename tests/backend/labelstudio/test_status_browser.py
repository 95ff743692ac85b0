"""The status page in a real browser (Debian's Chromium, driven by Playwright): what a person sees."""

from __future__ import annotations

import os

import pytest

from tests.support.browser import CHROMIUM, launch_chromium
from tests.support.fakes import LoopbackServer
from tests.support.status_state import HOSTILE, populate

pytestmark = pytest.mark.slow


@pytest.fixture()
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


def test_status_page_renders_backend_state_in_chromium(harness_factory, fake_ls, browser):
    h = harness_factory(LABEL_STUDIO_URL=fake_ls.url, LABEL_STUDIO_API_KEY=fake_ls.api_key)
    state = populate(h, fake_ls)
    server = LoopbackServer(h.app)
    try:
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        page = context.new_page()
        problems: list[str] = []
        page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        assert page.goto(f"{server.url}/status?refresh=0").status == 200
        assert page.title() == "dcsam backend status"  # the hostile label's onerror never ran
        # every example thumbnail decoded and laid out: 2 of cat, 1 of the hostile label
        thumbs = page.eval_on_selector_all("img.thumb", "els => els.map(e => [e.complete, e.naturalWidth])")
        assert len(thumbs) == 3 and all(done and width > 0 for done, width in thumbs)
        labels = page.locator(".label b").all_text_contents()
        assert sorted(labels) == sorted(["cat", HOSTILE])  # shown as text
        # the running job's bar is filled to its progress (30 of 100)
        row = page.locator(f'tr.job[data-status="running"]:has(td:text-is("{state.running_job}"))')
        bar, fill = row.locator(".bar").bounding_box(), row.locator(".bar > div").bounding_box()
        assert bar and fill and fill["width"] / bar["width"] == pytest.approx(0.30, abs=0.02)
        # the refusal says why and what to do, on the refused job's row
        refused = page.locator(f'tr.job:has(td:text-is("{state.refused_job}")) td.msg')
        assert refused.is_visible() and "1 more with 'cat'" in refused.inner_text()
        # the plot: the promoted candidate (0.58) is drawn above the model it replaced (0.41)
        before = page.locator("svg.plot circle.run-before").first.bounding_box()
        promoted = page.locator("svg.plot circle.run-after.promoted").bounding_box()
        rejected = page.locator("svg.plot circle.run-after.rejected").bounding_box()
        assert before and promoted and rejected
        assert promoted["y"] < before["y"] and promoted["x"] < rejected["x"]
        assert page.locator("#engine").inner_text() == h.service.choice.engine
        assert state.version in page.locator(f"#project-{5}").inner_text()
        assert problems == []
    finally:
        server.close()
