"""Check a built site in a real browser: headless Chromium driven over its DevTools protocol.

Public surface: :func:`find_chromium`, :func:`serve`, :func:`check_site` (every page: load it, then report missing
images, broken internal links and anchors, JavaScript errors, failed or external requests, and pages with fewer
figures than expected) and :class:`PageReport`.

NOTE: the browser's proxy is a closed port, so a page that fetches anything from outside 127.0.0.1 (a CDN script, a
web font, a badge image) fails here as it would for a workshop participant offline. Uses websocket-client (the
``book`` extra) and the system's Chromium; nothing is downloaded.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import html.parser
import json
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urldefrag, urlparse

import nbformat

from cryonb.errors import CryoNBError
from cryonb.io import atomic_path

__all__ = ["Browser", "PageReport", "check_book", "check_site", "find_chromium", "output_figures", "serve"]

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: what the page reports once it has loaded: images (after forcing lazy ones to load), links, figures in outputs
PAGE_PROBE = """(async () => {
  const imgs = Array.from(document.images);
  imgs.forEach(i => { i.loading = "eager"; });
  await Promise.all(imgs.map(i => i.decode().catch(() => null)));
  return JSON.stringify({
    images: imgs.map(i => ({src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0})),
    links: Array.from(document.querySelectorAll("a[href]")).map(a => a.href),
    figures: document.querySelectorAll(".cell_output img").length,
  });
})()"""


@dataclass
class PageReport:
    """What one page did in the browser; ``problems`` is empty for a good page."""

    url: str
    problems: list[str] = field(default_factory=list)
    figures: int = 0
    seconds: float = 0.0


def find_chromium() -> str | None:
    """The system's Chromium (or Chrome) executable, or None."""
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """Serve ``folder`` on 127.0.0.1 at a free port from a thread; yields the base URL (ending in /)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class Browser:
    """Headless Chromium with one tab, driven over the DevTools protocol (a small synchronous client)."""

    def __init__(self, executable: str, width: int = 1280, height: int = 800, timeout_s: float = 30.0) -> None:
        self.executable, self.width, self.height, self.timeout_s = executable, width, height, timeout_s
        self._next_id = 0

    def __enter__(self) -> Browser:
        import websocket

        self._profile = tempfile.TemporaryDirectory(prefix="cryonb-chromium-")
        self._proc = subprocess.Popen(
            [self.executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars", "--proxy-server=http://127.0.0.1:9", "--remote-debugging-port=0",
             f"--user-data-dir={self._profile.name}", f"--window-size={self.width},{self.height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self._profile.name) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout_s
        while not (port_file.is_file() and len(port_file.read_text().splitlines()) >= 2):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self._stop()
                raise CryoNBError(f"{self.executable} did not start (exit {self._proc.poll()})")
            time.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        self._ws = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=self.timeout_s, suppress_origin=True)
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=True)
        self.send("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": self.height, "deviceScaleFactor": 1,
                                                         "mobile": False}, session=True)
        self.events: list[dict[str, Any]] = []
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self._ws.close()
        self._stop()

    def _stop(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        self._profile.cleanup()

    def send(self, method: str, params: Mapping[str, Any] | None = None, session: bool = False) -> dict[str, Any]:
        """Send one command and return its result; events that arrive meanwhile are kept in ``events``."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": dict(params or {})}
        if session:
            message["sessionId"] = self._session
        self._ws.send(json.dumps(message))
        while True:
            reply = json.loads(self._ws.recv())
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise CryoNBError(f"DevTools {method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                getattr(self, "events", []).append(reply)

    def wait_for(self, method: str) -> None:
        """Read events until ``method`` arrives (e.g. Page.loadEventFired)."""
        deadline = time.monotonic() + self.timeout_s
        while not any(e["method"] == method for e in self.events):
            if time.monotonic() > deadline:
                raise CryoNBError(f"no {method} within {self.timeout_s} s")
            self.events.append(json.loads(self._ws.recv()))

    def open(self, url: str) -> None:
        self.events = []
        self.send("Page.navigate", {"url": url}, session=True)
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True}, session=True)
        if "exceptionDetails" in result:
            raise CryoNBError(f"page script failed: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def screenshot(self, target: Path) -> Path:
        data = self.send("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            tmp.write_bytes(base64.b64decode(data))
        return target


class _Ids(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.ids.update(v for k, v in attrs if k in ("id", "name") and v)


@functools.lru_cache(maxsize=256)
def _ids_of(path: Path) -> frozenset[str]:
    parser = _Ids()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return frozenset(parser.ids)


def _local_file(site: Path, base: str, url: str) -> Path | None:
    """The file under ``site`` that a URL of the served site names (None for another host)."""
    if not url.startswith(base):
        return None
    rel = unquote(urlparse(url).path)[len(urlparse(base).path):]
    target = site / rel
    return target / "index.html" if rel == "" or rel.endswith("/") else target


def _link_problems(site: Path, base: str, links: list[str]) -> list[str]:
    problems = []
    for link in sorted(set(links)):
        page, fragment = urldefrag(link)
        target = _local_file(site, base, page)
        if target is None:
            continue  # another host: a link out (Colab, papers) is followed by the reader, not loaded by the page
        if not target.is_file():
            problems.append(f"broken internal link {link}")
        elif fragment and target.suffix == ".html" and unquote(fragment) not in _ids_of(target):
            problems.append(f"broken anchor {link}")
    return problems


def _event_problems(events: list[dict[str, Any]], base: str) -> list[str]:
    problems, urls = [], {}
    for e in events:
        method, p = e["method"], e.get("params", {})
        if method == "Network.requestWillBeSent":
            url = p["request"]["url"]
            urls[p["requestId"]] = url
            if not url.startswith((base, "data:", "about:", "blob:")):
                problems.append(f"request outside the site: {url}")
        elif method == "Network.loadingFailed" and not p.get("canceled"):
            problems.append(f"failed to load {urls.get(p['requestId'], '?')}: {p.get('errorText')}")
        elif method == "Network.responseReceived" and p["response"]["status"] >= 400:
            problems.append(f"HTTP {p['response']['status']} for {p['response']['url']}")
        elif method == "Runtime.exceptionThrown":
            details = p["exceptionDetails"]
            problems.append(f"JavaScript exception: {details.get('exception', {}).get('description') or details.get('text')}")
        elif method == "Runtime.consoleAPICalled" and p.get("type") == "error":
            problems.append("console error: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
            problems.append(f"browser error: {p['entry']['text']} ({p['entry'].get('url', '')})")
    return problems


def check_site(site: Path, pages: list[Path], expected_figures: Mapping[Path, int] | None = None,
               screenshots: Mapping[Path, Path] | None = None, chromium: str | None = None) -> list[PageReport]:
    """Load every page of ``site`` (files under it) in headless Chromium and report what is wrong on each.

    expected_figures : page → the least number of output images (``.cell_output img``) it must show.
    screenshots : page → PNG path; a notebook page is scrolled to its first figure first.
    """
    executable = chromium or find_chromium()
    if executable is None:
        raise CryoNBError(f"no Chromium found (looked for {', '.join(CHROMIUM_NAMES)}); install it, e.g. apt-get install chromium")
    expected_figures, screenshots = expected_figures or {}, screenshots or {}
    reports = []
    with serve(site) as base, Browser(executable) as browser:
        for page in pages:
            url = base + page.relative_to(site).as_posix()
            start = time.perf_counter()
            browser.open(url)
            probe = json.loads(browser.evaluate(PAGE_PROBE))
            time.sleep(0.05)  # let late console messages of the load arrive
            browser.evaluate("1")
            report = PageReport(url, figures=probe["figures"])
            report.problems += _event_problems(browser.events, base)
            report.problems += [f"missing image {i['src']}" for i in probe["images"] if not i["ok"]]
            report.problems += _link_problems(site, base, probe["links"])
            want = expected_figures.get(page, 0)
            if probe["figures"] < want:
                report.problems.append(f"{probe['figures']} figures shown, expected at least {want}")
            if page in screenshots:
                browser.evaluate("(() => { const f = document.querySelector('.cell_output img'); if (f) f.scrollIntoView(); "
                                 "return 1; })()")
                browser.screenshot(screenshots[page])
            report.seconds = time.perf_counter() - start
            reports.append(report)
    return reports


def output_figures(executed: Path) -> int:
    """How many figures (PNG outputs) the executed notebook ``executed`` holds: its page must show as many."""
    nb = nbformat.read(executed, as_version=4)
    return sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if "image/png" in o.get("data", {}))


def check_book(site: Path, pages: list[Path], results_dir: Path, screenshots_dir: Path) -> list[PageReport]:
    """Check a site built from ``results_dir`` (:func:`cryonb.book.build_site`): every notebook page shows its
    notebook's figures; screenshots of the landing page and notebook 01 (at its first figure) go to ``screenshots_dir``.
    """
    expected = {p: output_figures(results_dir / f"{p.stem}.ipynb") for p in pages if p.parent.name == "notebooks"}
    shots = {site / "index.html": screenshots_dir / "landing.png",
             site / "notebooks" / "01_simulation.html": screenshots_dir / "notebook-01_simulation.png"}
    return check_site(site, pages, expected, {page: png for page, png in shots.items() if page in pages})
