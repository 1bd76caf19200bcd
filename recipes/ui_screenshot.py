"""Screenshots of the MLflow UI as a person sees it: headless Chromium (the system's, through Playwright's
Python API; nothing is downloaded) opens an experiment page of a tracking server.

Used by the UI test and to make ``docs/img/mlflow_sweep.png``::

    python -m recipes.ui_screenshot http://127.0.0.1:5000 sweep_quickstart docs/img/mlflow_sweep.png
"""
from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class ScreenshotError(RuntimeError):
    """No browser, no such experiment, or the page never showed what was expected."""


@dataclass
class Screenshot:
    path: Path
    text: str  # the page's visible text when the screenshot was taken
    url: str


def find_chromium() -> str | None:
    """The system Chromium (Debian package ``chromium``), or None."""
    for candidate in CHROMIUM_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    return shutil.which("chromium")


def experiment_url(server: str, experiment: str) -> str:
    """The UI address of ``experiment``'s runs table on ``server``."""
    from mlflow.tracking import MlflowClient

    found = MlflowClient(server).get_experiment_by_name(experiment)
    if found is None:
        raise ScreenshotError(f"no experiment {experiment!r} at {server}")
    return f"{server.rstrip('/')}/#/experiments/{found.experiment_id}/runs"


def screenshot_experiment(server: str, experiment: str, out: Path, expect: Sequence[str] = (),
                          columns: Sequence[str] = ("psnr", "ssim", "size_kb", "macs"),
                          width: int = 1600, height: int = 1000, timeout_s: float = 90.0) -> Screenshot:
    """Open the experiment's runs table in the "Model training" view, show the ``columns`` (metric or param keys),
    expand nested runs (sweep points and their stages), wait until every text in ``expect`` (run names)
    is visible, and save a PNG of the page."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    chromium = find_chromium()
    if chromium is None:
        raise ScreenshotError("no Chromium found (apt-get install chromium)")
    url = experiment_url(server, experiment)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(timeout_s * 1000)
            page.goto(url, wait_until="load")
            step = "the runs table"
            try:
                page.locator("[role=gridcell]").first.wait_for(state="visible")
                step = "the Model training view"
                training = page.get_by_text("Model training", exact=True)
                if training.count():
                    training.first.click()
                _close_assistant(page)
                step = "the metric columns"
                _show_columns(page, columns)
                _expand_nested_runs(page)
                for text in expect:
                    step = repr(text)
                    page.get_by_text(text, exact=False).first.wait_for(state="visible")
            except PlaywrightError as exc:
                page.screenshot(path=str(out))
                raise ScreenshotError(f"{url}: never showed {step} ({str(exc).splitlines()[0]}); see {out}") from None
            page.wait_for_timeout(800)  # let the last column widths settle
            page.screenshot(path=str(out))
            text = page.inner_text("body")
        finally:
            browser.close()
    return Screenshot(out, text, url)


def _close_assistant(page) -> None:  # noqa: ANN001  (playwright Page)
    """The MLflow Assistant side panel takes a third of the page; close it when it is open."""
    close = page.locator("button[data-component-id='mlflow.assistant.chat_panel.close']")
    if close.count():
        close.first.click()
        page.wait_for_timeout(300)


def _show_columns(page, columns: Sequence[str]) -> None:  # noqa: ANN001
    """Tick the ``columns`` in the "Columns" menu (and untick the attribute columns that crowd them)."""
    page.get_by_role("button", name="Columns").first.click()
    search = page.get_by_placeholder("Search columns")
    search.wait_for(state="visible")
    for name in ("Dataset", "Source", "Models"):
        _set_column(page, search, name, False)
    for name in columns:
        _set_column(page, search, name, True)
    page.keyboard.press("Escape")
    page.wait_for_timeout(300)


def _set_column(page, search, name: str, shown: bool) -> None:  # noqa: ANN001
    """One node of the column selector tree (searched by name, matched exactly) set to ``shown``."""
    search.fill(name)
    page.wait_for_timeout(300)
    nodes = page.locator("[data-testid=column-selector-tree] [class*='tree-treenode']")
    texts = [t.strip() for t in nodes.all_inner_texts()]  # a search highlights the match: compare whole titles
    if name not in texts:
        return
    checkbox = nodes.nth(texts.index(name)).locator("[class*='tree-checkbox']").first
    is_checked = "tree-checkbox-checked" in (checkbox.get_attribute("class") or "")
    if is_checked != shown:
        checkbox.click()
        page.wait_for_timeout(200)


def _expand_nested_runs(page, levels: int = 1) -> None:  # noqa: ANN001  (playwright Page)
    """Click the expand toggle of every parent run, ``levels`` deep (1: a sweep's points, 2: their stages)."""
    toggle = "button[data-component-id$='runnamecellrenderer.tsx_46']"
    for _ in range(levels):
        buttons = page.locator(toggle)
        before = page.locator("[role=row]").count()
        for i in range(buttons.count()):
            try:
                buttons.nth(i).click(timeout=2000)
            except Exception:  # noqa: BLE001  (a toggle that re-rendered away is fine)
                pass
        page.wait_for_timeout(700)
        if page.locator("[role=row]").count() == before:
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Screenshot an MLflow experiment page with headless Chromium.")
    parser.add_argument("server", help="tracking server URL, e.g. http://127.0.0.1:5000")
    parser.add_argument("experiment", help="experiment name")
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("--expect", action="append", default=[], help="text that must be visible (repeatable)")
    parser.add_argument("--column", action="append", default=None, help="metric or param column to show (repeatable)")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1000)
    args = parser.parse_args(argv)
    try:
        shot = screenshot_experiment(args.server, args.experiment, args.out, args.expect,
                                     args.column or ("psnr", "ssim", "size_kb", "macs"), args.width, args.height)
    except ScreenshotError as exc:
        print(f"ui_screenshot: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {shot.path} ({shot.url})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
