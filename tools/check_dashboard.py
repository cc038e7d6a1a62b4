#!/usr/bin/env python3
"""End-to-end check of the published asv dashboard in a real headless browser.

After `asv publish` (see docs/benchmarks.md) this serves the HTML directory on
127.0.0.1, opens it in headless Chromium driven by Selenium, and checks what a person
would see:

* the summary page lists every benchmark of ``index.json`` and each summary plot has
  plotted points;
* a benchmark's graph page (default ``ops.Softmax.time_op``) draws lines for
  logitcore's backends and for at least one peer, over at least ``--min-commits``
  commits;
* the benchmark list has rows and the regressions page renders;
* the browser logged no JavaScript error and no failed request.

It writes screenshots of the summary page and of the graph page (default
docs/asv-dashboard.png and docs/asv-graph.png) and exits non-zero on any failure.
Without Chromium, chromedriver or Selenium it prints why and exits 0 (``--require``
makes that a failure). Needs: apt-get install -y chromium chromium-driver;
pip install selenium.

asv 0.6 pages load jQuery, Flot, Bootstrap, stupidtable and blueimp-md5 from public
CDNs. Machines without internet access (CI here) cannot reach them, so by default the
pages are served with those ``<script>``/``<link>`` tags pointing at local copies of
the same libraries: the ones asv itself shipped up to release 0.5.1, fetched once with
``pip download asv==0.5.1`` into asv_bench/.asv/www-vendor. The files on disk are not
changed. ``--cdn`` serves the pages exactly as published (needs internet).
``--serve`` only serves the dashboard that way, for viewing, until Ctrl-C.

    python tools/check_dashboard.py [--html-dir asv_bench/.asv/html]
    python tools/check_dashboard.py --serve 8080
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOGITCORE_IMPLS = ("numpy", "numba", "cython")
PEERS = ("torch", "scipy", "jax", "sklearn")

# Points with a value in each flot plot of the page (summary tiles or the main graph).
_SUMMARY_POINTS_JS = """
var counts = {};
$('.benchmark-plot').each(function () {
    var plot = $(this).data('plot');
    var name = this.id.replace(/^summarygrid-/, '');
    counts[name] = plot ? plot.getData().reduce(function (n, series) {
        return n + series.data.filter(function (p) { return p && p[1] !== null; }).length;
    }, 0) : -1;
});
return counts;
"""

_GRAPH_SERIES_JS = """
var plot = $('#main-graph').data('plot');
if (!plot) { return null; }
return plot.getData().filter(function (s) { return s.label; }).map(function (s) {
    return {label: String(s.label),
            points: s.data.filter(function (p) { return p && p[1] !== null; }).length};
});
"""

_ERROR_HOOK_JS = """
window.__pageErrors = [];
window.addEventListener('error', function (e) { window.__pageErrors.push(String(e.message)); });
window.addEventListener('unhandledrejection', function (e) {
    window.__pageErrors.push('unhandled rejection: ' + String(e.reason));
});
"""


class CheckFailed(Exception):
    pass


def _skip(message: str, required: bool) -> int:
    print(f"check_dashboard: {'FAILED' if required else 'SKIPPED'}: {message}")
    return 1 if required else 0


# --- the web libraries, served locally ----------------------------------------------

ASSET_DIR = REPO / "asv_bench" / ".asv" / "www-vendor"
ASSET_SOURCE = "asv==0.5.1"  # the last asv release that shipped its web libraries
VENDOR_PREFIX = "/_vendor/"
# (pattern of a CDN URL in asv's index.html, local file from asv 0.5.1's www/vendor)
CDN_ASSETS = [
    (r"code\.jquery\.com/jquery-3\.[\d.]+\.min\.js$", "jquery-3.3.1.min.js"),
    (r"/flot/0\.8\.3/jquery\.flot\.min\.js$", "jquery.flot-0.8.3.min.js"),
    (r"/flot/0\.8\.3/jquery\.flot\.time\.min\.js$", "jquery.flot-0.8.3.time.min.js"),
    (r"/flot/0\.8\.3/jquery\.flot\.selection\.min\.js$",
     "jquery.flot-0.8.3.selection.min.js"),
    (r"/flot/0\.8\.3/jquery\.flot\.categories\.min\.js$",
     "jquery.flot-0.8.3.categories.min.js"),
    (r"flot-orderbars@[\d.]+/js/jquery\.flot\.orderBars\.js$", "jquery.flot.orderBars.js"),
    (r"/stupidtable/[\d.]+/stupidtable\.min\.js$", "stupidtable.js"),
    (r"/blueimp-md5/[\d.]+/js/md5\.min\.js$", "md5.js"),
    (r"bootstrap@3\.[\d.]+/dist/js/bootstrap\.min\.js$", "bootstrap-3.1.0.min.js"),
    (r"bootstrap@3\.[\d.]+/dist/css/bootstrap\.min\.css$", "bootstrap-3.1.0.min.css"),
]
_TAG = re.compile(r"<(script|link)\b[^>]*>", re.IGNORECASE)
_URL_ATTRIBUTE = re.compile(r'\b(src|href)="(https?://[^"]+)"')
_CDN_ONLY_ATTRIBUTES = re.compile(r'\s(integrity|crossorigin|referrerpolicy)="[^"]*"')


def local_assets() -> Path:
    """Directory holding the libraries of CDN_ASSETS, downloaded on first use."""
    wanted = {name for _, name in CDN_ASSETS}
    if all((ASSET_DIR / name).is_file() for name in wanted):
        return ASSET_DIR
    with tempfile.TemporaryDirectory() as scratch:
        download = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--no-binary", ":all:", "--dest", scratch, ASSET_SOURCE],
            capture_output=True, text=True)
        if download.returncode != 0:
            raise CheckFailed(f"pip download {ASSET_SOURCE} failed:\n{download.stderr}")
        (sdist,) = Path(scratch).glob("asv-*.tar.gz")
        ASSET_DIR.mkdir(parents=True, exist_ok=True)
        with tarfile.open(sdist) as archive:
            for member in archive.getmembers():
                name = member.name.rsplit("/", 1)[-1]
                if "/asv/www/vendor/" in member.name and name in wanted:
                    (ASSET_DIR / name).write_bytes(archive.extractfile(member).read())
    missing = sorted(n for n in wanted if not (ASSET_DIR / n).is_file())
    if missing:
        raise CheckFailed(f"{ASSET_SOURCE} lacks {missing}")
    return ASSET_DIR


def with_local_assets(html: str) -> str:
    """``html`` with asv's CDN script/stylesheet URLs replaced by VENDOR_PREFIX ones
    (and their integrity attributes dropped: the local files are the same libraries,
    not always the same bytes). An external asset not in CDN_ASSETS is an error: a
    newer asv needs a new entry there."""
    def local_tag(match):
        tag = match.group(0)
        found = _URL_ATTRIBUTE.search(tag)
        if not found:
            return tag
        if match.group(1).lower() == "link" and "stylesheet" not in tag:
            return tag
        url = found.group(2)
        for pattern, name in CDN_ASSETS:
            if re.search(pattern, url):
                tag = tag.replace(url, VENDOR_PREFIX + name)
                return _CDN_ONLY_ATTRIBUTES.sub("", tag)
        raise CheckFailed(f"no local copy of {url} (add it to CDN_ASSETS)")
    return _TAG.sub(local_tag, html)


class _DashboardHandler(http.server.SimpleHTTPRequestHandler):
    """Static files of the published dashboard, optionally with local web libraries."""

    asset_dir: Path | None = None

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        if self.asset_dir is None:
            return super().do_GET()
        if path.startswith(VENDOR_PREFIX):
            return self._send(self.asset_dir / Path(path).name)
        if path == "/" or path.endswith(".html"):
            page = Path(self.directory) / (path.lstrip("/") or "index.html")
            if page.is_file():
                body = with_local_assets(page.read_text(encoding="utf-8")).encode()
                return self._send_bytes(body, "text/html; charset=utf-8")
        return super().do_GET()

    def _send(self, file: Path):
        if not file.is_file():
            return self.send_error(404)
        self._send_bytes(file.read_bytes(), self.guess_type(str(file)))

    def _send_bytes(self, body: bytes, content_type: str):
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve(directory: Path, asset_dir: Path | None, port: int = 0):
    """Serve ``directory`` on 127.0.0.1 from a daemon thread; return (server, url)."""
    handler_class = type("Handler", (_DashboardHandler,), {"asset_dir": asset_dir})
    handler = functools.partial(handler_class, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def make_driver(chromium: str, chromedriver: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1400,1000", "--hide-scrollbars",
                     "--force-device-scale-factor=1"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": _ERROR_HOOK_JS})
    return driver


def wait_for(driver, script: str, what: str, timeout: float):
    """Poll ``script`` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(script)
        if value:
            return value
        if time.monotonic() > deadline:
            raise CheckFailed(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def browser_errors(driver) -> list[str]:
    errors = [entry["message"] for entry in driver.get_log("browser")
              if entry.get("level") == "SEVERE"]
    errors += driver.execute_script("return window.__pageErrors || [];")
    return errors


def summary_points(html_dir: Path, names) -> dict[str, int]:
    """Points with a value in each benchmark's published summary series."""
    counts = {}
    for name in names:
        series = html_dir / "graphs" / "summary" / f"{name}.json"
        data = json.loads(series.read_text()) if series.is_file() else []
        counts[name] = sum(1 for point in data if point and point[1] is not None)
    return counts


def check_summary(driver, url, published: dict[str, int], screenshot: Path, timeout: float):
    """The summary grid shows a tile per benchmark whose plot has every published point."""
    driver.set_window_size(1400, 1000)
    driver.get(url + "index.html")
    wait_for(driver, "return window.$ && $.asv && $.asv.main_json && "
             "$('.benchmark-container').length", "the summary grid", timeout)
    # Tiles draw their plot when scrolled into view: make the window as tall as the
    # grid so that every tile is in view (and in the screenshot).
    height = driver.execute_script(
        "return Math.max.apply(null, $('.benchmark-container').map(function () {"
        "    return $(this).offset().top + $(this).outerHeight(true); }).get());")
    height = min(max(int(height) + 60, 1000), 8000)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 1400, "height": height, "deviceScaleFactor": 1, "mobile": False})
    counts = wait_for(
        driver,
        "$(window).trigger('scroll');"  # the resize may land after the first trigger
        "var c = (function () {" + _SUMMARY_POINTS_JS + "})();"
        f"return Object.values(c).filter(function (n) {{ return n >= 0; }}).length"
        f" >= {len(published)} ? c : null;",
        f"{len(published)} summary plots to draw", timeout)
    missing = sorted(set(published) - set(counts))
    if missing:
        raise CheckFailed(f"summary page lacks benchmarks: {missing}")
    wrong = {name: (counts[name], points) for name, points in published.items()
             if counts[name] != points}
    if wrong:
        raise CheckFailed(f"summary plots whose plotted points differ from the published "
                          f"data (plotted, published): {wrong}")
    with_data = [name for name, points in published.items() if points > 0]
    if not with_data:
        raise CheckFailed("no benchmark has any published data point")
    time.sleep(0.3)
    driver.save_screenshot(str(screenshot))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    print(f"summary page: {len(counts)} benchmarks, {len(with_data)} plots with data, "
          f"{sum(published.values())} points in all, as published; screenshot {screenshot}")
    for name in sorted(set(published) - set(with_data)):
        print(f"  (no data at any commit yet: {name})")


def check_other_pages(driver, url, timeout: float):
    """The benchmark list has a row per result and the regressions page renders (they
    use the table-sorting and md5 libraries the grid and graphs do not)."""
    driver.get(url + "index.html#summarylist")
    driver.refresh()
    rows = wait_for(driver, "return $('#summarylist-body table:visible tbody tr').length",
                    "rows in the benchmark list", timeout)
    driver.get(url + "index.html#regressions")
    driver.refresh()
    wait_for(driver, "return $('#regressions-display:visible table').length",
             "the regressions table", timeout)
    print(f"benchmark list: {rows} rows; regressions page rendered")


def check_graph(driver, url, benchmark: str, min_commits: int, expect: list[str],
                screenshot: Path, timeout: float):
    """The graph page of ``benchmark`` (log y axis, asv's default selection of lines:
    every implementation, first dtype and shape) plots logitcore and peers."""
    driver.set_window_size(1400, 1000)
    driver.get(url + "index.html#" + benchmark + "?y-axis-scale=log")
    driver.refresh()  # a hash change alone does not reload the page
    series = wait_for(driver, "var s = (function () {" + _GRAPH_SERIES_JS + "})();"
                      "return s && s.length ? s : null;", f"the graph of {benchmark}", timeout)
    drawn = [s for s in series if s["points"] > 0]
    # asv labels a line by its parameters: "dtype-float32; impl-numba; shape-2048x1000".
    drawn_impls = {m.group(1) for s in drawn for m in [re.search(r"impl-([\w.]+)", s["label"])]
                   if m}
    ours = [impl for impl in LOGITCORE_IMPLS if impl in drawn_impls]
    peers = [peer for peer in PEERS if peer in drawn_impls]
    absent = [impl for impl in expect if impl not in drawn_impls]
    most_points = max((s["points"] for s in drawn), default=0)
    print(f"graph {benchmark}: {len(drawn)} lines with data ({', '.join(ours + peers)}), "
          f"up to {most_points} commits")
    if not ours or not peers or absent:
        raise CheckFailed(f"graph of {benchmark} should show logitcore backends and peers"
                          f"{' including ' + ', '.join(absent) if absent else ''}; "
                          f"lines drawn: {[s['label'] for s in drawn]}")
    if most_points < min_commits:
        raise CheckFailed(f"graph of {benchmark} has at most {most_points} commits, "
                          f"expected >= {min_commits}")
    time.sleep(0.3)
    driver.save_screenshot(str(screenshot))
    print(f"graph page screenshot {screenshot}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--html-dir", type=Path, default=REPO / "asv_bench" / ".asv" / "html")
    parser.add_argument("--benchmark", default="ops.Softmax.time_op",
                        help="graph page to open (default: %(default)s)")
    parser.add_argument("--min-commits", type=int, default=2,
                        help="commits the graph must show (default: %(default)s)")
    parser.add_argument("--expect", default="", metavar="IMPL,...",
                        help="implementations the graph must draw, e.g. numba,cython,torch")
    parser.add_argument("--summary-png", type=Path, default=REPO / "docs" / "asv-dashboard.png")
    parser.add_argument("--graph-png", type=Path, default=REPO / "docs" / "asv-graph.png")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--chromedriver", default=shutil.which("chromedriver")
                        or "/usr/bin/chromedriver")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--require", action="store_true",
                        help="fail instead of skipping when the browser or selenium is absent")
    parser.add_argument("--cdn", action="store_true",
                        help="load the web libraries from their CDNs, as published "
                             "(needs internet)")
    parser.add_argument("--serve", type=int, metavar="PORT",
                        help="only serve the dashboard (with local web libraries unless "
                             "--cdn) on 127.0.0.1:PORT until Ctrl-C")
    args = parser.parse_args(argv)

    index = args.html_dir / "index.json"
    if not index.is_file():
        print(f"check_dashboard: FAILED: {index} not found; run `asv publish` first")
        return 1
    if args.serve is None:
        for path, package in ((args.chromium, "chromium"),
                              (args.chromedriver, "chromium-driver")):
            if not Path(path).is_file():
                return _skip(f"{path} not found (apt-get install -y {package})", args.require)
        try:
            import selenium  # noqa: F401
        except ImportError:
            return _skip("selenium is not installed (pip install selenium)", args.require)
    try:
        asset_dir = None if args.cdn else local_assets()
        if asset_dir is not None:  # fail here, not inside the server, on unknown assets
            with_local_assets((args.html_dir / "index.html").read_text(encoding="utf-8"))
    except CheckFailed as failure:
        print(f"check_dashboard: FAILED: no local copies of the web libraries ({failure}); "
              f"use --cdn where the CDNs are reachable")
        return 1
    if args.serve is not None:
        server, url = serve(args.html_dir, asset_dir, args.serve)
        print(f"serving {args.html_dir} at {url}index.html (Ctrl-C stops)")
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            server.shutdown()
        return 0

    published = summary_points(args.html_dir, json.loads(index.read_text())["benchmarks"])
    if args.benchmark not in published:
        print(f"check_dashboard: FAILED: {args.benchmark} is not in {index}")
        return 1
    for png in (args.summary_png, args.graph_png):
        png.parent.mkdir(parents=True, exist_ok=True)

    server, url = serve(args.html_dir, asset_dir)
    driver = make_driver(args.chromium, args.chromedriver)
    try:
        check_summary(driver, url, published, args.summary_png, args.timeout)
        errors = browser_errors(driver)
        check_other_pages(driver, url, args.timeout)
        errors += browser_errors(driver)
        check_graph(driver, url, args.benchmark, args.min_commits,
                    [impl for impl in args.expect.split(",") if impl], args.graph_png,
                    args.timeout)
        errors += browser_errors(driver)
        if errors:
            raise CheckFailed("JavaScript errors in the browser log:\n  "
                              + "\n  ".join(dict.fromkeys(errors)))
    except CheckFailed as failure:
        print(f"check_dashboard: FAILED: {failure}")
        return 1
    finally:
        driver.quit()
        server.shutdown()
    print("check_dashboard: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
