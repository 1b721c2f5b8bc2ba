"""The playground at /ui in a real headless Chromium (Debian's `chromium` + `chromium-driver`, installed by
`make browser-deps`), driven by Selenium against the served sample KB.

Gold mention as in test_serve_app: an entity's own name, description and image, so even the untrained model
ranks it first. Screenshots go to the test's tmp folder.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.fixtures import wait_until

pytestmark = pytest.mark.browser
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("no Debian chromium + chromium-driver: run `make browser-deps`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1400"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # no Selenium Manager download
    yield driver
    driver.quit()


def _text(driver, element_id: str) -> str:
    return driver.find_element("id", element_id).text


def _link(driver, url: str, mention: str, context: str, image: Path | None) -> None:
    driver.get("about:blank")  # a fresh page: the same URL with a #hash would keep the last form and answer
    driver.get(f"{url}/ui/#link")
    driver.find_element("id", "mention").send_keys(mention)
    driver.find_element("id", "context").send_keys(context)
    if image is not None:
        driver.find_element("id", "image").send_keys(str(image))
        wait_until(lambda: driver.find_element("id", "clear-image").is_displayed(), what="the image read")
    driver.find_element("id", "link-button").click()


def test_gold_mention_ranks_first_on_the_page(served_kb, browser, tmp_path):
    entity = next(e for e in served_kb.entities if e["image_uris"])
    _link(browser, served_kb.url, entity["name"], entity["description"], Path(entity["image_uris"][0]))
    first = wait_until(
        lambda: [c for c in browser.find_elements("css selector", "#candidates li.cand") if c.is_displayed()],
        timeout_s=60,
        what="candidates",
    )[0]
    assert first.get_attribute("data-rank") == "1"
    assert first.get_attribute("data-entity-id") == entity["entity_id"]
    assert entity["name"] in first.text
    assert _text(browser, "verdict")  # NIL or linked, with the threshold when calibrated
    assert browser.find_elements("css selector", "#usage .usage-layer")  # explain is on by default
    assert "ms total" in _text(browser, "timings")
    assert browser.find_element("id", "preview").get_attribute("alt").startswith("The mention's image")
    wait_until(
        lambda: browser.execute_script(
            "return [...document.querySelectorAll('#candidates img.thumb')].some(i => i.complete && i.naturalWidth > 0)"
        ),
        what="an entity thumbnail",
    )
    browser.save_screenshot(str(tmp_path / "link.png"))
    assert (tmp_path / "link.png").stat().st_size > 0
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1200, height + 200)  # the whole answer, plus room for the window frame
    browser.save_screenshot(str(tmp_path / "link-full.png"))
    browser.set_window_size(1200, 1400)


def test_bad_image_shows_the_error_beside_the_image_field(served_kb, browser, tmp_path):
    bad = tmp_path / "not-an-image.png"
    bad.write_bytes(b"this is not a PNG" * 20)
    _link(browser, served_kb.url, "anything", "", bad)
    message = wait_until(lambda: _text(browser, "err-image"), timeout_s=60, what="the image error")
    assert "image" in message and "decodable" in message
    assert _text(browser, "err-form") == ""  # beside the field, not in a general banner
    assert browser.find_element("id", "drop").get_attribute("aria-invalid") == "true"
    browser.save_screenshot(str(tmp_path / "bad-image.png"))


def test_entity_page_opens_from_a_candidate_and_from_the_kb_browser(served_kb, browser, tmp_path):
    entity = next(e for e in served_kb.entities if e["image_uris"])
    _link(browser, served_kb.url, entity["name"], entity["description"], None)
    link = wait_until(
        lambda: [a for a in browser.find_elements("css selector", "#candidates a.open") if a.is_displayed()],
        timeout_s=60,
        what="a candidate link",
    )
    target = link[0].find_element("xpath", "./ancestor::li").get_attribute("data-entity-id")
    link[0].click()
    wait_until(lambda: _text(browser, "entity-id") == target, what="the entity page")
    shown = next(e for e in served_kb.entities if e["entity_id"] == target)
    assert _text(browser, "entity-name") == shown["name"]
    assert _text(browser, "entity-description") == shown["description"]
    assert browser.current_url.endswith("#entity/" + target)
    attributes = httpx.get(f"{served_kb.url}/entities/{target}", timeout=60).json()["attributes"]
    on_page = _text(browser, "entity-attributes")
    assert attributes and all(f"{k}\n{v}" in on_page for k, v in attributes.items() if isinstance(v, str))
    browser.save_screenshot(str(tmp_path / "entity.png"))

    browser.get(f"{served_kb.url}/ui/#browse")
    query = browser.find_element("id", "q")
    query.send_keys(entity["name"])
    query.submit()
    from selenium.common.exceptions import (
        ElementNotInteractableException,
        NoSuchElementException,
        StaleElementReferenceException,
    )

    result = f'#browse-list li[data-entity-id="{entity["entity_id"]}"] a.open'

    def open_result() -> bool:
        """The first listing of #browse may show the entity too, then be replaced by the search's answer: a
        click that lands on the replaced link moves nothing, so the click counts once the location moved."""
        opened = "#entity/" + quote(entity["entity_id"], safe="")
        if browser.current_url.endswith(opened):
            return True
        try:
            browser.find_element("css selector", result).click()
        except (NoSuchElementException, StaleElementReferenceException, ElementNotInteractableException):
            return False
        return browser.current_url.endswith(opened)

    wait_until(open_result, what="the search result")
    wait_until(lambda: _text(browser, "entity-id") == entity["entity_id"], what="the entity page")
    assert _text(browser, "entity-description") == entity["description"]
    browser.get(f"{served_kb.url}/ui/#browse")
    limit = browser.find_element("id", "limit")
    limit.clear()
    limit.send_keys("500")
    browser.find_element("id", "search-button").click()
    assert "limit" in wait_until(lambda: _text(browser, "err-limit"), what="the limit error")
    browser.save_screenshot(str(tmp_path / "browse.png"))
