"""The gateway's notebook page in a real browser: Selenium driving Debian's headless Chromium.

Each test runs a real :class:`fsm.server.KernelServer` and a real :class:`fsm.gateway.Gateway`
in front of it, both on 127.0.0.1 under trio in a background thread, and drives the page the
gateway serves at ``GET /``. Waits are conditions (``WebDriverWait`` in the browser,
``wait_until`` on the servers), never sleeps. A failing test saves a screenshot and prints
its path. ``FSM_UPDATE_SCREENSHOTS=1`` also writes the screenshots the docs show
(``docs/img/gateway-*.png``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
import trio_websocket
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from fsm import RetryPolicy
from fsm.gateway import Gateway
from fsm.server import KernelServer
from fsm.servers.gateway._page import render_page

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
STATES = ("NOT_STARTED", "CONNECTING", "OPEN", "CLOSING", "CLOSED")
UPDATE_SCREENSHOTS = os.environ.get("FSM_UPDATE_SCREENSHOTS") == "1"
#: How long a browser-side condition may take; generous for 2 loaded CI cores.
WAIT = 15.0

T = TypeVar("T")


# -- the page as served (no browser needed) -----------------------------------------------


def test_page_diagram_is_the_generated_one() -> None:
    """The page ships the diagram ``fsm diagrams`` generated (copy it after regenerating)."""
    shipped = ROOT / "fsm" / "servers" / "gateway" / "static" / "lifecycle.svg"
    generated = ROOT / "diagrams" / "lifecycle.svg"
    assert shipped.read_bytes() == generated.read_bytes(), (
        "fsm/servers/gateway/static/lifecycle.svg differs from diagrams/lifecycle.svg: "
        "copy it after `fsm diagrams` (cp diagrams/lifecycle.svg fsm/servers/gateway/static/)"
    )


def test_page_is_self_contained() -> None:
    """The page inlines its style, script and diagram: no asset request, no CDN."""
    page = render_page().decode("utf-8")
    assert not re.search(r"""<(script|link|img)\b[^>]*\b(src|href)\s*=\s*["'](?!data:)""", page)
    assert "http://" not in page.replace("http://www.w3.org/", "")
    assert "https://" not in page
    assert page.count("<svg") == 1 and "<?xml" not in page
    titles = set(re.findall(r"<title>([^<]+)</title>", page))
    # What the page highlights: a node per state, and per phase of the compound CONNECTING.
    for name in (*STATES, "DIALING", "BACKING_OFF"):
        if name == "CONNECTING":
            name = "cluster_connecting"
        assert name.lower() in titles, f"the diagram has no node titled {name.lower()}"
    for hook in ("upstream-state", "connect", "cell", "run"):
        assert f'"{hook}"' in page, hook


# -- servers in a thread ------------------------------------------------------------------


class Stack:
    """A KernelServer and a Gateway in front of it, served by trio in a background thread.

    The test thread reads and changes their state only through :meth:`call` (run in the trio
    thread) and waits on it with :meth:`wait`, bounded by ``trio.fail_after``.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        policy: RetryPolicy | None = None,
        marimo: Path | None = None,
    ) -> None:
        self.server = KernelServer()
        self.token = token
        self.policy = policy
        self.marimo = marimo
        self.gateway: Gateway | None = None
        self._nursery: trio.Nursery | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="browser-test-servers", daemon=True)

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported in the test thread by __exit__
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._stop = trio.Event()
        async with contextlib.AsyncExitStack() as resources, trio.open_nursery() as nursery:
            await nursery.start(self.server.serve)
            upstream = self.server.url
            if self.marimo is not None:
                from marimo_server import marimo_server

                upstream = (await resources.enter_async_context(marimo_server(self.marimo))).url
            self.gateway = Gateway(
                upstream=upstream,
                token=self.token,
                policy=self.policy,
                marimo=None if self.marimo is None else str(self.marimo),
            )
            await nursery.start(self.gateway.serve)
            self._nursery = nursery
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._stop.wait()
            with trio.fail_after(10):
                await self.gateway.shutdown()
                await self.server.shutdown()

    def __enter__(self) -> Stack:
        self._thread.start()
        self._ready.wait(90)
        if self._error is not None or self._token is None:
            raise RuntimeError("the test servers did not start") from self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None and self._thread.is_alive():
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(20)
        if self._error is not None:
            raise RuntimeError("the test servers failed") from self._error

    @property
    def page_url(self) -> str:
        assert self.gateway is not None
        if self.token is None:
            return self.gateway.page_url
        return f"{self.gateway.page_url}?token={self.token}"

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` in the servers' trio thread and return its result."""
        return trio.from_thread.run_sync(fn, trio_token=self._token)

    def spawn(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Start ``fn()`` as a task in the servers' thread (it ends with the servers)."""
        assert self._nursery is not None
        nursery = self._nursery
        self.call(lambda: nursery.start_soon(fn))

    def wait(self, predicate: Callable[[KernelServer], bool], timeout: float = WAIT) -> None:
        """Return once ``predicate(server)`` holds (re-checked on every change of the server)."""

        async def waiter() -> None:
            with trio.fail_after(timeout):
                await self.server.wait_until(predicate)

        trio.from_thread.run(waiter, trio_token=self._token)

    def poll(self, predicate: Callable[[Gateway], bool], what: str, timeout: float = WAIT) -> None:
        """Wait until ``predicate(gateway)`` holds, checked in the servers' thread.

        The gateway's ``wait_until`` wakes on session changes, not on every edit, so this
        checks the condition at a short interval, as ``WebDriverWait`` does in the browser.
        """
        gateway = self.gateway
        assert gateway is not None
        WebDriverWait(gateway, timeout, poll_frequency=0.05).until(
            lambda g: self.call(lambda: predicate(g)), what
        )


# -- the browser ----------------------------------------------------------------------------

browser_missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
needs_browser = pytest.mark.skipif(
    bool(browser_missing), reason=f"Chromium/ChromeDriver not installed: {browser_missing}"
)


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    """One headless Chromium for the module, with a fresh profile."""
    profile = tempfile.mkdtemp(prefix="fsm-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--no-first-run",
        "--window-size=1280,860", f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


class Page:
    """The notebook page in one browser window, read through its test hooks."""

    def __init__(self, driver: Any, shots: Path) -> None:
        self.driver = driver
        self.shots = shots

    def css(self, selector: str) -> list[Any]:
        return list(self.driver.find_elements(By.CSS_SELECTOR, selector))

    def until(self, condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
        """Wait until ``condition()`` is truthy in the browser, and return its value."""
        def check(_: Any) -> Any:
            try:
                return condition()
            except StaleElementReferenceException:
                return False  # the page re-rendered under us: look again

        return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(check, what)

    def text(self, testid: str) -> str:
        found = self.css(f'[data-testid="{testid}"]')
        return str(found[0].text) if found else ""

    @property
    def state(self) -> str:
        return self.text("upstream-state")

    @property
    def words(self) -> str:
        return self.text("upstream-words")

    def wait_state(self, state: str, timeout: float = WAIT) -> None:
        self.until(lambda: self.state == state, f"upstream-state {state} (was {self.state})",
                   timeout)

    def highlighted(self) -> str:
        """The ``<title>`` of the diagram node the page highlights (one, or a list)."""
        titles = self.driver.execute_script(
            "return [...document.querySelectorAll('#diagram svg g.node.current > title')]"
            ".map((t) => t.textContent)"
        )
        return str(titles[0]) if len(titles) == 1 else str(titles)

    def view(self) -> dict[str, Any]:
        """The upstream panel and the diagram's highlight, read at one instant."""
        return dict(self.driver.execute_script("""
            const text = (sel) => document.querySelector(sel)?.textContent ?? null;
            return {
                state: text('[data-testid="upstream-state"]'),
                phase: text('#upstream-phase'),
                words: text('[data-testid="upstream-words"]'),
                connect: text('[data-testid="connect"]'),
                highlighted: [...document.querySelectorAll('#diagram svg g.node.current > title')]
                    .map((t) => t.textContent),
                taken: [...document.querySelectorAll('#diagram svg g.edge.taken > title')]
                    .map((t) => t.textContent),
            };
        """))

    def cells(self) -> list[Any]:
        return self.css('[data-testid="cell"]')

    def cell_id(self, index: int = 0) -> str:
        return str(self.cells()[index].get_attribute("data-cell-id"))

    def cell_part(self, index: int, testid: str) -> Any:
        item = self.cells()[index].find_element(By.XPATH, "./ancestor::li")
        return item.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')

    def output(self, index: int = 0) -> str:
        """The text of cell ``index``'s result, "" until the kernel sent one."""
        out = self.cell_part(index, "output")
        if out.get_attribute("data-kind") != "result":
            return ""
        return str(out.find_element(By.CSS_SELECTOR, ".out-text").text)

    def marker(self, index: int = 0) -> str:
        return str(self.cell_part(index, "pending").get_attribute("data-state"))

    def connect_button(self) -> Any | None:
        found = self.css('[data-testid="connect"]')
        return found[0] if found else None

    def session_id(self) -> str:
        return str(self.until(lambda: self.driver.execute_script(
            "return window.fsmPage && window.fsmPage.ready && window.fsmPage.sessionId"
        ), "the page attached to a session"))

    def shot(self, name: str) -> None:
        """Write the docs' screenshot ``docs/img/gateway-NAME.png`` when asked to."""
        if UPDATE_SCREENSHOTS:
            target = ROOT / "docs" / "img" / f"gateway-{name}.png"
            target.parent.mkdir(exist_ok=True)
            self.driver.execute_script("document.activeElement && document.activeElement.blur()")
            # Colour transitions finished, so the picture shows one state, not a fade.
            self.driver.execute_async_script("""
                const done = arguments[arguments.length - 1];
                const fading = document.getAnimations().filter((a) => a instanceof CSSTransition);
                Promise.all(fading.map((a) => a.finished.catch(() => null))).then(() => done());
            """)
            self.driver.save_screenshot(str(target))

    @contextlib.contextmanager
    def serve(self, **stack: Any) -> Iterator[Stack]:
        """Run a :class:`Stack`; if the test fails inside, screenshot every window first."""
        with Stack(**stack) as servers:
            try:
                yield servers
            except BaseException:
                for n, handle in enumerate(self.driver.window_handles):
                    self.driver.switch_to.window(handle)
                    path = self.shots / f"failure-{n}.png"
                    self.driver.save_screenshot(str(path))
                    print(f"screenshot of the failing page: {path}")
                raise
            finally:
                self.leave()

    def leave(self) -> None:
        """Close extra windows and blank the first: nothing left talking to stopped servers."""
        for handle in self.driver.window_handles[1:]:
            self.driver.switch_to.window(handle)
            self.driver.close()
        self.driver.switch_to.window(self.driver.window_handles[0])
        self.driver.get("about:blank")

    def console_errors(self) -> list[dict[str, Any]]:
        return [e for e in self.driver.get_log("browser") if e.get("level") == "SEVERE"]


@pytest.fixture
def page(driver: Any, tmp_path: Path) -> Iterator[Page]:
    """The browser on a blank window, its console log emptied; screenshots go to tmp_path."""
    driver.get("about:blank")
    driver.get_log("browser")  # drop what earlier tests left
    yield Page(driver, tmp_path)


def fast_policy(max_attempts: int = 25) -> RetryPolicy:
    # Waits long enough to watch BACKING_OFF in the browser, short enough for a quick test.
    return RetryPolicy(max_attempts=max_attempts, initial_delay=0.6, multiplier=1.5,
                       max_delay=2.0, jitter=0.0, connect_timeout=3.0)


# -- the story ------------------------------------------------------------------------------


@needs_browser
def test_lazy_edit_then_run(page: Page) -> None:
    """Loads NOT_STARTED, no upstream yet; Run connects, delivers the edit, shows the output."""
    with page.serve(policy=fast_policy()) as stack:
        page.driver.get(stack.page_url)
        page.wait_state("NOT_STARTED")
        session = page.session_id()
        assert page.connect_button() is not None
        assert "not started" in page.words
        assert page.text("upstream-state") == "NOT_STARTED"
        assert page.highlighted() == "not_started"
        assert len(page.cells()) == 1, "a new session offers one cell to edit"

        page.cells()[0].send_keys("answer = 6 * 7")
        cell_id = page.cell_id()
        stack.poll(lambda g: g.sessions[session].doc.get(cell_id) == "answer = 6 * 7",
                   "the gateway holds the edit")
        status = stack.call(lambda: stack.gateway.status() if stack.gateway else {})
        assert status["sessions"][0]["upstream"]["state"] == "NOT_STARTED"
        assert page.until(lambda: page.marker() == "waiting", "the edit waits for the kernel")
        page.shot("not-started")
        assert stack.call(lambda: stack.server.handshakes) == 0, "lazy: no upstream yet"

        page.cell_part(0, "run").click()
        page.wait_state("OPEN")
        assert page.highlighted() == "open"
        assert page.view()["taken"] == ["dialing->open"], "the transition just taken"
        assert page.connect_button() is None, "Connect cannot act while OPEN"
        stack.wait(lambda s: s.cells.get(cell_id) == "answer = 6 * 7")
        output = page.until(lambda: page.output(0), "the run's output")
        assert output == "answer = 6 * 7"  # the reference server echoes the cell's code
        page.until(lambda: page.marker() == "saved", "the edit acknowledged")
        assert stack.call(lambda: stack.server.sessions_seen) == {session}

        # A second cell, written and run from the keyboard (Shift+Enter), while OPEN.
        page.css("#add-cell")[0].click()
        assert len(page.cells()) == 2
        second = page.cells()[1]
        assert page.driver.switch_to.active_element == second, "a new cell takes the focus"
        second.send_keys("print(answer)")
        second.send_keys(Keys.SHIFT, Keys.ENTER)
        assert page.until(lambda: page.output(1), "the second cell's output") == "print(answer)"
        assert second.get_attribute("value") == "print(answer)", "Shift+Enter runs, adds no line"
        stack.wait(lambda s: s.cells.get(page.cell_id(1)) == "print(answer)")
        page.shot("page")
        assert page.console_errors() == []


@needs_browser
def test_give_up_then_connect_recovers(page: Page) -> None:
    """Refusals show attempts, then GAVE_UP; Connect recovers and delivers the later edit."""
    with page.serve(policy=fast_policy(max_attempts=3)) as stack:
        page.driver.get(stack.page_url)
        page.wait_state("NOT_STARTED")
        stack.call(lambda: setattr(stack.server.faults, "refuse_handshakes", 10**6))
        page.cells()[0].send_keys("x = 1")
        cell_id = page.cell_id()

        page.cell_part(0, "run").click()
        page.until(lambda: (lambda v: v["state"] == "CONNECTING" and "attempt" in v["words"])(
            page.view()), "CONNECTING with its attempts shown")
        # One look at the whole page, so a back-off ending meanwhile cannot mix two states.
        seen = page.until(lambda: (lambda v: "next try in" in v["words"] and v)(page.view()),
                          "a back-off with its countdown")
        assert seen["state"] == "CONNECTING" and seen["phase"] == "BACKING_OFF", seen
        assert re.search(r"attempt [12] of 3 failed, next try in \d", seen["words"]), seen
        assert seen["connect"] == "Retry now", seen
        assert seen["highlighted"] == ["backing_off"], seen
        page.shot("backing-off")

        page.wait_state("CLOSED")
        assert page.words == "gave up after 3 attempts: press Connect"
        assert page.highlighted() == "closed"
        assert page.view()["taken"] == ["dialing->closed"], "the last attempt failed"
        assert stack.call(lambda: stack.server.connections_opened) == 0
        page.cells()[0].send_keys("\ny = 2")  # an edit made while the upstream is down
        page.until(lambda: page.marker() == "waiting", "the new edit waits for the kernel")
        page.shot("gave-up")

        stack.call(lambda: setattr(stack.server.faults, "refuse_handshakes", 0))
        button = page.connect_button()
        assert button is not None and button.text == "Connect"
        button.click()
        page.wait_state("OPEN")
        stack.wait(lambda s: s.cells.get(cell_id) == "x = 1\ny = 2")
        page.until(lambda: page.marker() == "saved", "the edit made meanwhile acknowledged")
        assert page.console_errors() == []


@needs_browser
def test_reload_keeps_session_and_tabs_do_not_share(page: Page) -> None:
    """A reload reattaches to its session and cells; a second tab gets its own session."""
    with page.serve(policy=fast_policy()) as stack:
        page.driver.get(stack.page_url)
        page.wait_state("NOT_STARTED")
        first = page.session_id()
        page.cells()[0].send_keys("kept = True")
        cell_id = page.cell_id()
        stack.poll(lambda g: g.sessions[first].doc.get(cell_id) == "kept = True",
                   "the gateway holds the edit")

        page.driver.refresh()
        page.wait_state("NOT_STARTED")
        assert page.session_id() == first
        assert page.cells()[0].get_attribute("value") == "kept = True"
        assert page.cell_id() == cell_id
        stack.poll(lambda g: g.sessions[first].client is not None, "the reload reattached")
        assert stack.call(lambda: len(stack.gateway.sessions) if stack.gateway else 0) == 1

        own = page.driver.current_window_handle
        page.driver.switch_to.new_window("tab")
        page.driver.get(stack.page_url)
        page.wait_state("NOT_STARTED")
        second = page.session_id()
        assert second != first
        assert re.fullmatch(r"[0-9a-f]{32}", second), "a 128-bit random session id"
        assert page.cells()[0].get_attribute("value") == ""
        stack.poll(lambda g: len(g.sessions) == 2, "a second session")
        page.driver.switch_to.window(own)
        assert page.text("upstream-state") == "NOT_STARTED"
        assert page.driver.execute_script("return window.fsmPage.link") == "open", (
            "the second tab did not take the first tab's session"
        )

        # A duplicated tab starts with a copy of this tab's sessionStorage; it must not
        # take (and keep fencing) this tab's session.
        stored = page.driver.execute_script("return sessionStorage.getItem('fsm-gateway.page')")
        page.driver.switch_to.new_window("tab")
        page.driver.get(stack.page_url)
        page.driver.execute_script("sessionStorage.setItem('fsm-gateway.page', arguments[0])",
                                   stored)
        page.driver.refresh()
        page.wait_state("NOT_STARTED")
        duplicate = page.session_id()
        assert duplicate not in (first, second)
        page.driver.switch_to.window(own)
        assert page.driver.execute_script("return window.fsmPage.link") == "open"
        assert stack.call(lambda: stack.server.handshakes) == 0, "lazy: no upstream yet"
        assert page.console_errors() == []


@needs_browser
def test_page_reconnects_and_resends(page: Page) -> None:
    """When its own socket drops, the page reconnects and re-sends the edits not acknowledged."""
    with page.serve(policy=fast_policy()) as stack:
        page.driver.get(stack.page_url)
        page.wait_state("NOT_STARTED")
        session = page.session_id()
        page.cells()[0].send_keys("a = 1")
        cell_id = page.cell_id()
        page.until(lambda: page.marker() == "waiting", "the edit sent, not acknowledged")
        # The link drops, and the person edits before it is back.
        page.driver.execute_script("""
            window.fsmPage.ws.close();
            const cell = document.querySelector('[data-testid="cell"]');
            cell.value = "a = 2";
            cell.dispatchEvent(new Event("input"));
        """)
        page.until(lambda: page.driver.execute_script("return window.fsmPage.link") != "open",
                   "the page saw its link drop")
        page.until(lambda: page.driver.execute_script("return window.fsmPage.ready"),
                   "the page reattached")
        assert page.session_id() == session
        stack.poll(lambda g: g.sessions[session].doc.get(cell_id) == "a = 2",
                   "the edit made while the link was down reached the gateway")
        # The gateway forgets the acks it owed the old socket: only a re-sent edit gets one.
        page.cell_part(0, "run").click()
        page.wait_state("OPEN")
        stack.wait(lambda s: s.cells.get(cell_id) == "a = 2")
        page.until(lambda: page.marker() == "saved", "the re-sent edit acknowledged")
        assert page.until(lambda: page.output(0), "the run's output") == "a = 2"
        assert page.console_errors() == []


@needs_browser
def test_a_client_taking_the_session_is_not_fought(page: Page) -> None:
    """Fenced by a newer client, the page says so, waits, and takes its session back on request."""
    with page.serve(policy=fast_policy()) as stack:
        page.driver.get(stack.page_url)
        page.wait_state("NOT_STARTED")
        session = page.session_id()
        assert stack.gateway is not None
        url = stack.gateway.url_for(session)
        closed: list[tuple[int | None, str | None]] = []

        async def other_client() -> None:
            async with trio_websocket.open_websocket_url(url) as ws:
                await ws.get_message()  # its kernel-ready: it is the session's writer now
                try:
                    while True:
                        await ws.get_message()
                except trio_websocket.ConnectionClosed as exc:
                    closed.append((exc.reason.code, exc.reason.reason))

        stack.spawn(other_client)
        page.until(lambda: page.driver.execute_script("return window.fsmPage.link") == "replaced",
                   "the page saw it was replaced")
        banner = page.css("#page-banner")[0]
        assert banner.is_displayed() and "open in another tab or window" in banner.text
        assert page.driver.execute_script("return window.fsmPage.linkTimer") is None, (
            "no reconnect scheduled: two writers must not take the session back and forth"
        )
        banner.find_element(By.TAG_NAME, "button").click()  # Use it here
        page.until(lambda: page.driver.execute_script("return window.fsmPage.ready"),
                   "the page took its session back")
        stack.poll(lambda g: bool(closed), "the other client was fenced")
        assert closed == [(1008, "replaced")]
        assert not banner.is_displayed()
        assert page.console_errors() == []


@needs_browser
def test_token_from_the_page_url(page: Page) -> None:
    """With a token the page uses the one in its own URL for its WebSocket, and never shows it."""
    token = "s3cret-token-for-the-page"
    with page.serve(token=token, policy=fast_policy()) as stack:
        assert stack.gateway is not None
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(stack.gateway.page_url, timeout=5)
        assert refused.value.code == 401
        page.driver.get(stack.page_url)
        page.wait_state("NOT_STARTED")
        page.cells()[0].send_keys("t = 1")
        page.cell_part(0, "run").click()
        page.wait_state("OPEN")
        page.until(lambda: page.output(0) == "t = 1", "the run's output")
        body = page.driver.find_element(By.TAG_NAME, "body").text
        assert token not in body
        # On a phone-sized window the page reflows into one column: nothing scrolls sideways.
        size = page.driver.get_window_size()
        try:
            page.driver.set_window_size(400, 800)
            page.until(lambda: page.driver.execute_script("return window.innerWidth") < 500,
                       "a narrow window")
            overflow = page.driver.execute_script(
                "return document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{overflow} px wider than a 400 px window"
        finally:
            page.driver.set_window_size(size["width"], size["height"])
        assert page.console_errors() == []


@needs_browser
def test_marimo_notebook_cells_and_outputs(page: Page, tmp_path: Path) -> None:
    """With a marimo upstream the page offers the notebook's cells and shows marimo's outputs."""
    pytest.importorskip("marimo", reason="the marimo test needs marimo: pip install -e '.[marimo]'")
    from marimo_server import write_notebook

    notebook = write_notebook(tmp_path / "nb.py", ["x = 1", "y = x + 1", "y * 10"])
    policy = RetryPolicy(max_attempts=400, initial_delay=0.05, max_delay=0.5,
                         connect_timeout=30.0, min_uptime=0.5)
    with page.serve(marimo=notebook, policy=policy) as stack:
        page.driver.get(stack.page_url)
        page.wait_state("NOT_STARTED")
        page.session_id()
        assert [c.get_attribute("value") for c in page.cells()] == ["x = 1", "y = x + 1", "y * 10"]
        first = page.cells()[0]
        first.send_keys(Keys.CONTROL, "a")
        first.send_keys("x = 5")
        page.until(lambda: page.marker(0) == "waiting", "the edit waits for the kernel")
        page.cell_part(2, "run").click()
        page.wait_state("OPEN", timeout=60)
        assert page.until(lambda: page.output(2) == "60" and page.output(2), "marimo's output",
                          timeout=60) == "60"
        page.until(lambda: page.marker(0) == "saved", "the edit acknowledged", timeout=30)
        page.shot("marimo")
        assert page.console_errors() == []
