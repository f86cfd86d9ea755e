"""Open a tiny fonts run's report in headless Chromium: every image loads, no console error, no
horizontal scrolling at a laptop's width; a full-page screenshot is kept in artifacts/.

Chromium is driven by its command line only (``--dump-dom`` and ``--screenshot``), no new dependency:
a copy of the report gets a small script at the top of ``<head>`` that records errors (script errors,
``console.error``, resources that fail to load) and, on ``load``, writes what it found into a
``<pre id="browser-check">`` that ``--dump-dom`` returns. The report itself holds no script.
"""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from convrnn.cli import main

pytestmark = pytest.mark.slow  # a real browser

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
WIDTH = 1280  # a laptop's width in CSS pixels
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]

CHECK = """<script>
window.__errors = [];
window.addEventListener("error", function (e) {
  __errors.push(e.message || ("failed to load " + (e.target && e.target.tagName) + " " + (e.target && e.target.alt)));
}, true);
(function () {
  var original = console.error;
  console.error = function () { __errors.push("console.error: " + Array.prototype.join.call(arguments, " ")); original.apply(console, arguments); };
})();
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var check = {
    images: imgs.length,
    broken: imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).map(function (i) { return i.alt; }),
    too_wide: imgs.filter(function (i) { return i.getBoundingClientRect().right > window.innerWidth; }).map(function (i) { return i.alt; }),
    errors: __errors,
    scroll_width: document.documentElement.scrollWidth,
    scroll_height: document.documentElement.scrollHeight,
    viewport: window.innerWidth
  };
  var pre = document.createElement("pre");
  pre.id = "browser-check";
  pre.textContent = JSON.stringify(check);
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None and os.path.exists("/usr/bin/chromium"):
        path = "/usr/bin/chromium"
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is not installed; .ci/run should have installed it (Debian package chromium)")
        pytest.skip("chromium is not installed (Debian package chromium); the browser test runs in CI")
    return path


def run_chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    run = root / "fonts-tiny"
    with pytest.raises(SystemExit) as exc:
        main(["-q", "train", "fonts", "--run-dir", str(run), "--samples-per-font", "40", "--epochs", "3",
              "--batch-size", "16", "--set", "train.log_every=5"])  # three validations: curves with several points
    assert exc.value.code == 0
    with pytest.raises(SystemExit) as exc:
        main(["-q", "report", str(run), "--max-batches", "2"])
    assert exc.value.code == 0
    return run / "report.html"


def test_report_loads_in_chromium_without_errors(report, tmp_path):
    browser = chromium()
    html = report.read_text(encoding="utf-8")
    checked = tmp_path / "checked.html"
    checked.write_text(html.replace("<head>", "<head>" + CHECK, 1), encoding="utf-8")
    done = run_chromium(browser, tmp_path / "profile", f"--window-size={WIDTH},2000", "--virtual-time-budget=5000",
                        "--dump-dom", checked.as_uri())
    found = re.search(r'<pre id="browser-check">(.*?)</pre>', done.stdout, re.S)
    assert found, f"chromium returned no check (exit {done.returncode}): {done.stderr[-2000:]}"
    check = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert check["images"] >= 4  # learning curves, filters, confusion matrix, misclassified examples
    assert check["broken"] == [], f"images that did not load: {check['broken']}"
    assert check["errors"] == [], f"errors in the page: {check['errors']}"
    assert check["too_wide"] == [] and check["scroll_width"] <= check["viewport"], \
        f"the page scrolls sideways at {WIDTH} px: {check}"

    # the untouched report, full height, as a screenshot artifact; it holds no script, so any console
    # line chromium logs (a resource refused, a bad data URI) is an error of the report
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report-fonts.png"
    shot.unlink(missing_ok=True)
    height = min(int(check["scroll_height"]) + 40, 16000)
    done = run_chromium(browser, tmp_path / "profile2", f"--window-size={WIDTH},{height}", f"--screenshot={shot}",
                        report.as_uri())
    assert shot.is_file() and shot.stat().st_size > 10_000, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], f"console messages: {console}"
    shutil.copy(shot, tmp_path / shot.name)
