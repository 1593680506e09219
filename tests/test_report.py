"""One self-contained report.html per analysis, checked as a file and in a real headless browser."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from harness.analysis.output import write_analysis

from .test_analysis import GB, _config, record

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium here (Debian: apt-get install chromium; .ci/run installs it)"
)
# The flags a headless Chromium needs on a machine with no display, no D-Bus and no network.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
]


def analysis(folder: Path):
    records = [
        record("table@cpu", sizes={1: (0.5, 2000), 64: (2.0, 30_000), 1024: (30.0, 40_000)}, accuracy=0.7801),
        record("tt@cpu", sizes={1: (0.6, 1800), 64: (2.2, 29_000), 1024: (33.0, 38_000)}, accuracy=0.7803),
        record("dhe@cuda", sizes={1: (1.0, 1000), 64: (1.1, 60_000), 1024: (4.0, 256_000)}, accuracy=0.7806),
        record("hybrid@cpu", status="FAILED", error="RuntimeError: injected fault"),
    ]
    errors = {r["run_id"]: r["tags"]["error"] for r in records if "error" in r["tags"]}
    return write_analysis(records, _config(folder), folder, errors, 24 * GB)


def test_an_analysis_writes_one_self_contained_html_report(tmp_path):
    out = analysis(tmp_path)
    assert out.report == tmp_path / "report.html"
    page = out.report.read_text()
    # Self-contained: no script, no link or source outside the page; every figure inline and a real PNG.
    assert "<script" not in page and not re.search(r'(src|href)="(?!data:)', page)
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="([^"]+)"', page)
    alts = {alt for _, alt in images}
    assert {"mapping heat map, synthetic_kaggle x0.1", "latency vs query size, synthetic_kaggle x0.1",
            "accuracy vs correct-prediction throughput, synthetic_kaggle x0.1", "roofline CPU"} <= alts
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for data, _ in images)
    assert len(images) == len(out.figures)  # every figure the analysis drew is in the page
    # The summary, the mapping and what was missing, as text.
    for sentence in out.summary:
        assert sentence.replace(">", "&gt;").replace("<", "&lt;") in page
    assert "run hybrid@cpu-0 is FAILED: RuntimeError: injected fault" in page
    assert page.count("<td class=\"path\">dhe@cuda<br>") >= 2  # chosen at the larger sizes


def screenshot(page: Path, out: Path, tmp_path: Path) -> str:
    """Load `page` in headless Chromium and screenshot it; returns Chromium's log (console messages)."""
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                           "--window-size=1200,2400", f"--screenshot={out}", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert out.is_file(), proc.stderr[-2000:]
    return proc.stderr


@needs_chromium
def test_the_report_loads_in_a_real_browser_with_no_console_error_and_is_not_blank(tmp_path):
    import matplotlib.image

    out = analysis(tmp_path)
    log = screenshot(out.report, tmp_path / "report.png", tmp_path)
    assert "CONSOLE" not in log  # Chromium logs every console message (errors, failed loads) as CONSOLE
    pixels = matplotlib.image.imread(tmp_path / "report.png")[..., :3]
    not_white = (pixels < 0.95).any(axis=-1).mean()
    assert not_white > 0.05 and pixels.std() > 0.05  # text, tables and figures, not an empty page

    # The check can fail: a page with a script error is caught by the same reading of the log.
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><p>x</p><script>undefinedFunction();</script></body></html>")
    assert "Uncaught ReferenceError" in screenshot(broken, tmp_path / "broken.png", tmp_path)
    blank = matplotlib.image.imread(tmp_path / "broken.png")[..., :3]
    assert (blank < 0.95).any(axis=-1).mean() < 0.01 and np.isfinite(blank).all()
