"""Look at the MLflow UI as a user does, in headless Chromium: screenshots of an experiment's runs (list
and charts) and of its sweep run's analysis (latency against query size on log axes, the report), and
the page's console errors. A check by eye of what README's "Comparing paths in the MLflow UI" promises.

    pip install playwright                       # its Python API only: the browser is Debian's chromium
    mlflow ui --backend-store-uri sqlite:///results/mlflow.db --port 5000 &
    python scripts/ui_look.py http://127.0.0.1:5000 mprec results/ui
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"


def main(server: str, experiment: str, out: Path) -> int:
    from mlflow.tracking import MlflowClient

    out.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(server)
    exp = client.get_experiment_by_name(experiment)
    sweeps = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("mprec.kind") == "sweep"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1600, "height": 1100})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        runs = f"{server}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
        page.goto(runs, wait_until="load")
        time.sleep(6)
        page.screenshot(path=str(out / "runs.png"))
        print("runs listed:", page.locator("a[href*='/runs/']").all_inner_texts())
        page.goto(runs + "&compareRunsMode=CHART", wait_until="load")  # the chart view of the same runs
        time.sleep(8)
        page.screenshot(path=str(out / "charts_with_assistant.png"))
        close = page.locator("button[aria-label='Close']")  # MLflow 3's Assistant panel takes a third
        if close.count():
            close.first.click()
            time.sleep(2)
        page.screenshot(path=str(out / "charts.png"))
        titles = [t for t in page.get_by_text("compare/").all_inner_texts() if t.startswith("compare/")]
        print(f"compare charts ({len(titles)}):", ", ".join(titles))
        if sweeps:
            run = sweeps[0].info.run_id
            page.goto(f"{server}/#/experiments/{exp.experiment_id}/runs/{run}/artifacts"
                      "?workflowType=machine_learning", wait_until="load")
            time.sleep(5)
            page.get_by_text("analysis", exact=True).first.click(timeout=5000)
            time.sleep(1)
            for name, shot in (("latency_", "sweep_latency.png"), ("report.html", "sweep_report.png")):
                page.get_by_text(name, exact=False).first.click(timeout=5000)
                time.sleep(3)
                page.screenshot(path=str(out / shot))
        browser.close()
    print("console errors:", errors or "none")
    print("screenshots:", ", ".join(sorted(p.name for p in out.glob("*.png"))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], Path(sys.argv[3])))
