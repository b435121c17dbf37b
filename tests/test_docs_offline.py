"""The docs site renders without internet access: built with mkdocs, loaded in headless
Chromium with every host but loopback unreachable, the lifecycle diagram is an SVG (no raw
Mermaid source), and a click shows it at full size."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mkdocs", reason="building the docs needs the docs extra")
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (test extra)")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 30.0
#: Where screenshots go (kept for a person to look at); a temporary folder by default.
SHOTS_ENV = "FSM_SCREENSHOTS"

missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
pytestmark = pytest.mark.skipif(bool(missing), reason=f"Chromium/ChromeDriver missing: {missing}")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built from this tree with mkdocs --strict."""
    out = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)],
        cwd=ROOT, check=True, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    return out


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def base_url(site: Path) -> Iterator[str]:
    """The built site served over HTTP on 127.0.0.1, from a thread."""
    handler = functools.partial(_Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium that reaches loopback only: a proxy that does not exist for
    everything else, and no name resolves."""
    profile = tempfile.mkdtemp(prefix="fsm-docs-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--proxy-server=http://127.0.0.1:9",  # nothing listens there
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_script_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get(SHOTS_ENV)
    path = Path(where) if where else tmp_path_factory.mktemp("shots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def rendered_diagram(browser: Any) -> Any:
    """Wait for Mermaid to have turned the diagram's source into an SVG; return the SVG."""
    return WebDriverWait(browser, WAIT).until(
        lambda d: (d.find_elements(By.CSS_SELECTOR, ".fsm-mermaid svg") or [None])[0],
        "the Mermaid diagram was not rendered",
    )


def test_the_browser_cannot_reach_the_internet(browser: Any, base_url: str) -> None:
    """The check means something: from the page, the CDN Mermaid came from fails to load."""
    browser.get(base_url)
    result = browser.execute_async_script(
        "const done = arguments[0];"
        "fetch('https://unpkg.com/mermaid@11/dist/mermaid.min.js', {mode: 'no-cors'})"
        "  .then(() => done('reached'), (e) => done('blocked: ' + e));"
    )
    assert result.startswith("blocked"), result


@pytest.mark.parametrize(("page", "name"), [("", "home"), ("lifecycle/", "lifecycle")])
def test_the_diagram_renders_offline(browser: Any, base_url: str, shots: Path, page: str,
                                     name: str) -> None:
    """Home and Lifecycle show the lifecycle as an SVG labelled in the domain's words,
    and no raw Mermaid source."""
    browser.get(base_url + page)
    svg = rendered_diagram(browser)
    labels = svg.get_attribute("textContent")
    assert "NOT_STARTED" in labels and "CONNECTING" in labels and "flush edits" in labels
    assert "on_enter_dialing" not in labels
    text = browser.find_element(By.TAG_NAME, "body").text
    assert "stateDiagram-v2" not in text and "-->" not in text
    assert svg.size["width"] > 300
    browser.save_screenshot(str(shots / f"docs-{name}.png"))


def test_the_graphviz_svg_loads_offline(browser: Any, base_url: str) -> None:
    """The Lifecycle page's Graphviz drawing is served with the site and loads."""
    browser.get(base_url + "lifecycle/")
    img = browser.find_element(By.CSS_SELECTOR, "img[src$='lifecycle.svg']")
    WebDriverWait(browser, WAIT).until(
        lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth",
                                   img),
        "the Graphviz SVG did not load",
    )


def test_a_click_shows_the_diagram_at_full_size(browser: Any, base_url: str,
                                                shots: Path) -> None:
    """Clicking the diagram opens it at its natural size, wider than the page column and
    with larger labels; Escape closes it."""
    browser.get(base_url)
    svg = rendered_diagram(browser)
    small = svg.size["width"]
    svg.click()
    big = WebDriverWait(browser, WAIT).until(
        lambda d: (d.find_elements(By.CSS_SELECTOR, ".fsm-diagram-overlay svg") or [None])[0],
        "no enlarged diagram",
    )
    assert big.size["width"] > 1.3 * small
    browser.save_screenshot(str(shots / "docs-home-enlarged.png"))
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    WebDriverWait(browser, WAIT).until(
        lambda d: not d.find_elements(By.CSS_SELECTOR, ".fsm-diagram-overlay"),
        "the overlay did not close",
    )
