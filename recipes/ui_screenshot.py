"""Screenshots of the MLflow UI as a person sees it: headless Chromium (the system's, through Playwright's
Python API; nothing is downloaded) opens an experiment's runs table or chart view, or a registered model, on a
tracking server, in a fresh browser profile (what a new user sees: no view chosen by hand before).

Used by the UI test and to make ``docs/img/mlflow_sweep.png``::

    python -m recipes.ui_screenshot http://127.0.0.1:5000 sweep_quickstart docs/img/mlflow_sweep.png
"""
from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipes.tracking import UI_VIEW_PARAM, experiment_ui_url

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class ScreenshotError(RuntimeError):
    """No browser, no such experiment, or the page never showed what was expected."""


@dataclass
class Screenshot:
    path: Path
    text: str  # the page's visible text when the screenshot was taken
    url: str  # where the page ended up (after the UI's own redirects)


def find_chromium() -> str | None:
    """The system Chromium (Debian package ``chromium``), or None."""
    for candidate in CHROMIUM_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    return shutil.which("chromium")


def experiment_url(server: str, experiment: str, chart: bool = False) -> str:
    """The UI address of ``experiment``'s runs table (``chart``: its chart view) on ``server``, in the
    "Model training" view (``recipes.tracking.UI_VIEW_PARAM``), the address ``ispdc run`` prints."""
    from mlflow.tracking import MlflowClient

    found = MlflowClient(server).get_experiment_by_name(experiment)
    if found is None:
        raise ScreenshotError(f"no experiment {experiment!r} at {server}")
    return experiment_ui_url(server, found.experiment_id, chart=chart)


@dataclass
class _Visit:
    page: Any  # playwright Page
    step: str = "the page"  # what the page is awaited to show now, for the error


@contextlib.contextmanager
def _browser_page(url: str, out: Path, width: int, height: int, timeout_s: float) -> Iterator[_Visit]:
    """A fresh headless Chromium (no stored UI choices, as a new user) on ``url``; a Playwright error
    inside the block becomes a ``ScreenshotError`` naming the visit's step, with the page saved to ``out``."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    chromium = find_chromium()
    if chromium is None:
        raise ScreenshotError("no Chromium found (apt-get install chromium)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(timeout_s * 1000)
            page.goto(url, wait_until="load")
            visit = _Visit(page)
            try:
                yield visit
            except PlaywrightError as exc:
                page.screenshot(path=str(out))
                raise ScreenshotError(f"{url}: never showed {visit.step} ({str(exc).splitlines()[0]}); "
                                      f"see {out}") from None
        finally:
            browser.close()


def _finish(page: Any, out: Path) -> Screenshot:
    page.wait_for_timeout(800)  # let the last column widths and charts settle
    page.screenshot(path=str(out))
    return Screenshot(out, page.inner_text("body"), page.url)


def screenshot_experiment(server: str, experiment: str, out: Path, expect: Sequence[str] = (),
                          columns: Sequence[str] = ("psnr", "ssim", "size_kb", "macs"),
                          width: int = 1600, height: int = 1000, timeout_s: float = 90.0) -> Screenshot:
    """Open the experiment's address as ``ispdc run`` prints it and fail unless it lands on the runs table
    (nothing is clicked to get there); show the ``columns`` (metric or param keys), expand nested runs (sweep
    points, recipe runs' stages), wait until every text in ``expect`` is visible, and save a PNG."""
    url = experiment_url(server, experiment)
    with _browser_page(url, Path(out), width, height, timeout_s) as visit:
        page = visit.page
        visit.step = "the runs table"
        page.locator("[role=gridcell]").first.wait_for(state="visible")
        _close_assistant(page)
        visit.step = "the metric columns"
        _show_columns(page, columns)
        _expand_nested_runs(page)
        for text in expect:
            visit.step = repr(text)
            page.get_by_text(text, exact=False).first.wait_for(state="visible")
        return _finish(page, Path(out))


def screenshot_charts(server: str, experiment: str, out: Path, charts: Sequence[str] = ("psnr",),
                      width: int = 1600, height: int = 1000, timeout_s: float = 90.0) -> Screenshot:
    """The experiment's chart view (one chart per metric of the runs shown, drawn as they scroll into view):
    each name in ``charts`` is typed into the chart search and its chart awaited; the PNG shows the charts
    the first name matches."""
    url = experiment_url(server, experiment, chart=True)
    with _browser_page(url, Path(out), width, height, timeout_s) as visit:
        page = visit.page
        visit.step = "the chart view"
        page.get_by_text("Model metrics", exact=False).first.wait_for(state="visible")
        _close_assistant(page)
        search = page.get_by_placeholder("Search metric charts")
        for chart in [*charts[1:], *charts[:1]]:
            visit.step = f"a chart of {chart!r}"
            search.fill(chart)
            page.get_by_text(chart, exact=True).first.wait_for(state="visible")
        return _finish(page, Path(out))


def screenshot_model(server: str, name: str, out: Path, expect: Sequence[str] = ("Version 1",),
                     width: int = 1600, height: int = 1000, timeout_s: float = 90.0) -> Screenshot:
    """A registered model's page in the model registry (versions, aliases); waits for every text in ``expect``."""
    url = f"{server.rstrip('/')}/#/models/{name}?{UI_VIEW_PARAM}"
    with _browser_page(url, Path(out), width, height, timeout_s) as visit:
        page = visit.page
        for text in expect:
            visit.step = repr(text)
            page.get_by_text(text, exact=False).first.wait_for(state="visible")
        _close_assistant(page)
        return _finish(page, Path(out))


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
    parser.add_argument("--chart", action="store_true", help="the chart view instead of the runs table "
                        "(--column then names the charts awaited)")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1000)
    args = parser.parse_args(argv)
    try:
        if args.chart:
            shot = screenshot_charts(args.server, args.experiment, args.out, args.column or ("psnr",), args.width,
                                     args.height)
        else:
            shot = screenshot_experiment(args.server, args.experiment, args.out, args.expect,
                                         args.column or ("psnr", "ssim", "size_kb", "macs"), args.width, args.height)
    except ScreenshotError as exc:
        print(f"ui_screenshot: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {shot.path} ({shot.url})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
