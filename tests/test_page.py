"""The live pages, opened in a real headless Chromium: history first, then samples as they arrive."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import tomllib
from pathlib import Path

import history_fixtures
import pytest
import requests
from conftest import start_bridge
from history_fixtures import wait_for_last
from test_history_answers import written_before

from radio.config import load_settings

home = history_fixtures.home
app = history_fixtures.app
publisher = history_fixtures.publisher
recorder = history_fixtures.recorder

TIMEOUT = 30
SCREENSHOTS = os.environ.get("RADIO_SCREENSHOTS")
"""A folder to keep the screenshots in (default: the test's own temporary folder)."""


@pytest.fixture
def bridge(home, broker, monkeypatch):
    # What `radio up` does: the pages point browsers at the broker's WebSocket port.
    monkeypatch.setenv("RADIO_PUBLIC_WEBSOCKET_URL", f"ws://127.0.0.1:{broker.ws_port}/mqtt")
    running = start_bridge(home, broker.mqtt_port)
    yield running
    stderr = running.stop()
    assert "Traceback" not in stderr, stderr


def chromium_paths() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        if os.environ.get("CI"):
            pytest.fail("chromium or chromedriver is missing: .ci/run installs them", pytrace=False)
        pytest.skip("Chromium is not installed (apt-get install chromium chromium-driver)")
    return browser, driver


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415 - only with selenium

    binary, driver = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--window-size=1200,900",
    ):
        options.add_argument(argument)
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    chrome.set_page_load_timeout(TIMEOUT)
    yield chrome
    chrome.quit()


def wait_for_text(chrome, selector, expected):
    """Poll the DOM (no sleep) until an element shows the text, or fail after the timeout."""
    from selenium.common.exceptions import StaleElementReferenceException  # noqa: PLC0415
    from selenium.webdriver.common.by import By  # noqa: PLC0415
    from selenium.webdriver.support.ui import WebDriverWait  # noqa: PLC0415

    def shown(driver):
        found = driver.find_elements(By.CSS_SELECTOR, selector)
        return bool(found) and found[0].text == expected

    try:
        # An element found may be replaced before its text is read (the page redraws the list):
        # that poll says nothing, the next one looks again.
        WebDriverWait(
            chrome, TIMEOUT, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,)
        ).until(shown)
    except Exception:  # noqa: BLE001 - say what the page showed instead
        found = chrome.find_elements(By.CSS_SELECTOR, selector)
        status = chrome.find_elements(By.ID, "status")
        pytest.fail(
            f"{selector} never showed {expected!r}: {[f.text for f in found]}, "
            f"status {[s.text for s in status]}, console {chrome.get_log('browser')}"
        )


def screenshot(chrome, tmp_path, name) -> Path:
    folder = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    assert chrome.save_screenshot(str(path))
    assert path.read_bytes().startswith(b"\x89PNG")
    return path


@pytest.mark.slow
@pytest.mark.browser
def test_the_page_of_a_public_network_shows_its_history_then_live_samples(
    home, broker, recorder, bridge, publisher, browser, tmp_path
):
    from selenium.webdriver.common.by import By  # noqa: PLC0415

    for tick in range(5):
        publisher.publish(
            "networks/pub", json.dumps({"tick": tick, "speed": 40 + tick * 1.5, "road": "A1"}), qos=1
        )
    wait_for_last(bridge, "pub", 5)
    browser.get(f"{bridge.url}/networks/pub")
    wait_for_text(browser, '#fields td[data-field="tick"]', "4")  # from the history
    wait_for_text(browser, "#status", "live")
    for tick in range(5, 9):
        publisher.publish(
            "networks/pub", json.dumps({"tick": tick, "speed": 40 + tick * 1.5, "road": "A1"}), qos=1
        )
    wait_for_text(browser, '#fields td[data-field="tick"]', "8")
    wait_for_text(browser, '#fields td[data-field="speed"]', "52")
    wait_for_text(browser, '#fields td[data-field="road"]', "A1")
    assert browser.find_elements(By.CSS_SELECTOR, "#plot canvas"), "no plot was drawn"
    legend = browser.find_element(By.CSS_SELECTOR, "#plot").text
    assert "tick" in legend
    assert "speed" in legend
    assert "road" not in legend  # not a number: shown as text, not plotted
    assert "unpkg" not in browser.page_source
    assert "cdn" not in browser.page_source.lower()
    screenshot(browser, tmp_path, "public-network")


@pytest.mark.slow
@pytest.mark.browser
def test_the_page_of_a_private_network_asks_for_a_key_and_keeps_it_in_the_tab(
    home, broker, recorder, bridge, publisher, browser, tmp_path
):
    from selenium.webdriver.common.by import By  # noqa: PLC0415

    browser.get(f"{bridge.url}/networks/A")
    wait_for_text(browser, "#status", "needs a key")
    assert browser.find_element(By.ID, "key-form").is_displayed()
    browser.find_element(By.ID, "key").send_keys(home.secrets["reader_b"])  # a key that may not read A
    browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
    wait_for_text(browser, "#status", "needs a key")
    assert "may not read" in browser.find_element(By.ID, "key-error").text

    browser.find_element(By.ID, "key").send_keys(home.secrets["reader_a"])
    browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
    wait_for_text(browser, "#status", "live")
    publisher.publish("networks/A", json.dumps({"level": 7}), qos=1)
    wait_for_text(browser, '#fields td[data-field="level"]', "7")
    assert browser.execute_script("return sessionStorage.getItem('radio-key')") == home.secrets["reader_a"]
    assert browser.execute_script("return localStorage.length") == 0
    assert home.secrets["reader_a"] not in browser.current_url
    screenshot(browser, tmp_path, "private-network")


@pytest.mark.slow
@pytest.mark.browser
def test_the_index_lists_what_the_visitor_may_read(home, broker, bridge, browser):
    from selenium.webdriver.common.by import By  # noqa: PLC0415

    anonymous = requests.get(bridge.url + "/", timeout=10).text
    assert ">pub<" in anonymous
    assert ">A<" not in anonymous
    keyed = requests.get(bridge.url + "/", headers={"API-KEY": home.secrets["reader_a"]}, timeout=10).text
    assert ">A<" in keyed
    assert ">B<" not in keyed
    assert requests.get(bridge.url + "/", headers={"API-KEY": "nonsense"}, timeout=10).status_code == 401

    browser.get(bridge.url + "/")
    browser.find_element(By.ID, "key").send_keys(home.secrets["reader_a"])
    browser.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
    wait_for_text(browser, "#networks li:first-child a", "A")


def test_the_page_of_an_unknown_network_is_a_private_one_s_and_the_vendored_scripts_are_served(
    home, broker, bridge
):
    """A network's name may be confidential: its page, which asks for a key, is the one every
    name gets that no visitor without a key reads; only a name no network can have is 404."""
    private = requests.get(bridge.url + "/networks/B", timeout=10)
    unknown = requests.get(bridge.url + "/networks/nowhere", timeout=10)
    assert (private.status_code, unknown.status_code) == (200, 200)
    assert 'data-public="false"' in private.text
    shown = ('"B"', ">B<", "/networks/B/", ">B ·", "B is private")  # where the page names its network
    expected = private.text
    for place in shown:
        assert place in expected, place
        expected = expected.replace(place, place.replace("B", "nowhere"))
    assert unknown.text == expected
    answer = requests.get(bridge.url + "/networks/a%20b", timeout=10)
    assert (answer.status_code, answer.json()) == (404, {"error": "no network 'a b'"})
    for name in ("vendor/mqtt.min.js", "vendor/uPlot.iife.min.js", "vendor/uPlot.min.css", "live.js"):
        served = requests.get(f"{bridge.url}/static/{name}", timeout=10)
        assert served.status_code == 200, name
        assert len(served.content) > 1000 or name.endswith(".css"), name


@pytest.mark.parametrize(
    ("bound", "asked_at", "told"),
    [
        ("ws://0.0.0.0:8080/mqtt", "http://192.0.2.7:5000", "ws://192.0.2.7:8080/mqtt"),
        ("wss://[::]:8081/mqtt", "https://radio.example.com", "wss://radio.example.com:8081/mqtt"),
        ("ws://[::]:8080/mqtt", "http://[2001:db8::7]:5000", "ws://[2001:db8::7]:8080/mqtt"),
        ("ws://127.0.0.1:8080/mqtt", "http://192.0.2.7:5000", "ws://127.0.0.1:8080/mqtt"),
    ],
)
def test_a_broker_on_every_interface_is_named_by_the_host_the_page_was_asked_for(app, bound, asked_at, told):
    """`docker run -p 8080:8080 -p 5000:5000`: the broker binds 0.0.0.0, and a browser elsewhere
    that opened http://HOST:5000/ must be sent to HOST's port 8080, not to its own loopback."""
    app.application.config["PUBLIC_WEBSOCKET_URL"] = bound
    page = app.get("/networks/pub", base_url=asked_at)
    assert f'data-websocket="{told}"' in page.get_data(as_text=True)
    origin = told.rsplit("/", 1)[0]
    assert f"connect-src 'self' {origin};" in page.headers["Content-Security-Policy"]


def test_a_host_header_that_is_no_host_is_put_in_no_page(app):
    app.application.config["PUBLIC_WEBSOCKET_URL"] = "ws://0.0.0.0:8080/mqtt"
    page = app.get("/networks/pub", headers={"Host": "x; script-src *"})
    assert "script-src *" not in page.get_data(as_text=True) + page.headers["Content-Security-Policy"]
    assert 'data-websocket="ws://127.0.0.1:8080/mqtt"' in page.get_data(as_text=True)


def test_every_page_file_is_package_data():
    """The wheel carries what the pages serve: each file under bridge/static and bridge/templates."""
    root = Path(__file__).resolve().parent.parent
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "radio.bridge"
    ]
    files = [
        p.relative_to(root / "bridge")
        for folder in ("static", "templates")
        for p in (root / "bridge" / folder).rglob("*")
        if p.is_file()
    ]
    assert len(files) >= 9
    for path in files:
        assert any(fnmatch.fnmatch(str(path), pattern) for pattern in patterns), (
            f"{path} is left out of the wheel"
        )


@pytest.mark.slow
@pytest.mark.browser
def test_the_page_shows_the_other_samples_when_one_in_the_history_is_not_strict_json(
    home, broker, bridge, publisher, browser
):
    """A sample stored before NaN was refused (history written earlier) costs only itself."""
    written_before(
        load_settings(home.config).history_path,
        "pub",
        ['{"tick": 1, "speed": 40}', '{"tick": 2, "speed": NaN}', '{"tick": 3, "speed": 42}'],
    )
    browser.get(f"{bridge.url}/networks/pub")
    wait_for_text(browser, '#fields td[data-field="tick"]', "3")
    wait_for_text(browser, "#status", "live")
    publisher.publish("networks/pub", json.dumps({"tick": 4, "speed": 43}), qos=1)
    wait_for_text(browser, '#fields td[data-field="tick"]', "4")
    assert not _csp_violations(browser)


@pytest.mark.slow
@pytest.mark.browser
def test_the_pages_load_with_nothing_failing_in_the_console(home, broker, recorder, bridge, browser):
    """No request of a page fails: a browser asks for /favicon.ico unless the page names an icon,
    and its 404 is an error in the console of every visitor who opens the developer tools."""
    browser.get(f"{bridge.url}/")
    browser.get(f"{bridge.url}/networks/pub")
    wait_for_text(browser, "#status", "live")
    assert [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"] == []


def _csp_violations(chrome) -> list[str]:
    return [
        entry["message"]
        for entry in chrome.get_log("browser")
        if "Content Security Policy" in entry["message"]
    ]


@pytest.mark.slow
@pytest.mark.browser
def test_the_pages_load_nothing_but_their_own_files_and_the_brokers_websocket(
    home, broker, recorder, bridge, publisher, browser, tmp_path
):
    """The live page works under its policy, and the policy stops what it must: another origin's
    script, an inline script, a fetch elsewhere, and framing."""
    for page in ("/", "/networks/pub", "/networks/A"):
        headers = requests.get(bridge.url + page, timeout=10).headers
        policy = dict(part.strip().split(" ", 1) for part in headers["Content-Security-Policy"].split(";"))
        assert policy["script-src"] == "'self'"
        assert policy["default-src"] == "'none'"
        assert policy["connect-src"] == f"'self' ws://127.0.0.1:{broker.ws_port}"
        assert policy["frame-ancestors"] == "'none'"
        assert headers["X-Frame-Options"] == "DENY"

    browser.get(f"{bridge.url}/networks/pub")
    wait_for_text(browser, "#status", "live")
    publisher.publish("networks/pub", json.dumps({"level": 3}), qos=1)
    wait_for_text(browser, '#fields td[data-field="level"]', "3")
    assert not _csp_violations(browser)
    browser.execute_script(
        "const s = document.createElement('script'); s.textContent = 'window.injected = 1';"
        "document.body.append(s);"
        "fetch('http://127.0.0.2:9/').catch(() => {});"
    )
    assert browser.execute_script("return window.injected === undefined")
    assert len(_csp_violations(browser)) >= 2  # the inline script and the fetch, both refused

    from selenium.webdriver.common.by import By  # noqa: PLC0415

    def framed(path: str) -> None:
        framing = tmp_path / "framing.html"
        framing.write_text(f"<iframe id=f src='{bridge.url}{path}'></iframe>")
        browser.switch_to.default_content()
        browser.get(framing.as_uri())
        browser.switch_to.frame(browser.find_element(By.ID, "f"))

    # A control first: a JSON answer, which sends no such header, does show in another site's frame.
    framed("/healthz")
    wait_for_text(browser, "body", '{"broker":"connected","status":"ok"}')
    framed("/networks/pub")
    from selenium.webdriver.support.ui import WebDriverWait  # noqa: PLC0415

    loaded = WebDriverWait(browser, TIMEOUT).until(
        lambda chrome: (
            chrome.execute_script("return document.readyState === 'complete' && document.URL")
            not in (False, "about:blank")
        )
    )
    assert loaded
    assert browser.execute_script("return document.URL").startswith("chrome-error:")  # refused
    assert browser.find_elements(By.ID, "network") == []
