"""The documentation site: it builds with ``mkdocs build --strict`` and its pages render to something a reader
can see.

The build runs as ``make docs`` does (a subprocess, the same interpreter), into a temporary folder, and must
log no warning: a broken link, a missing anchor, a page left out of the nav or a failing hook. Then a
headless Chromium screenshots the home page and one guide at 1280x900, and each PNG must hold a page: not
blank, with visible text in its header bar and its body. Without Chromium the screenshots are skipped
locally and fail in CI (``CI=true``), where ``.ci/run`` installs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT_S = 180
SHOT_TIMEOUT_S = 60
PAGES = ("index.html", "guides/steering/index.html")
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

pytestmark = pytest.mark.timeout(BUILD_TIMEOUT_S + len(PAGES) * SHOT_TIMEOUT_S + 60)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _missing(what: str) -> None:
    """Skip the test where ``what`` is not installed, except in CI, where it must be."""
    if _in_ci():
        pytest.fail(f"{what} is not installed; CI must have it (.ci/run installs it)")
    pytest.skip(f"{what} is not installed")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built with ``mkdocs build --strict``. Fails on any warning in the build's log."""
    try:
        import mkdocs  # noqa: F401  (installed by the dev extra)
    except ImportError:
        _missing("mkdocs (the dev extra: make setup)")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # a theme's upgrade notice, not a warning about these docs
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{log}"
    warnings = [line for line in log.splitlines() if "WARNING" in line]
    assert not warnings, "the build logged warnings:\n" + "\n".join(warnings)
    return out


def test_every_page_of_the_nav_is_built(site: Path) -> None:
    for page in (
        "index.html",
        "quickstart/index.html",
        "concepts/pipeline/index.html",
        "protocol/websocket-mode/index.html",
        "guides/steering/index.html",
        "architecture/index.html",
        "contributing/index.html",
    ):
        assert (site / page).is_file(), page


def test_the_cli_reference_is_generated_from_the_parser(site: Path) -> None:
    """``reference/cli.md`` exists only in the built site, made by the hook from the argparse parser."""
    assert not (ROOT / "docs" / "reference" / "cli.md").exists(), "the CLI reference must not be committed"
    html = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    for text in ("turnbench serve", "turnbench bench", "turnbench gate", "--max-body-bytes", "--write-baseline"):
        assert text in html, text


def _browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def _screenshot(browser: str, page: Path, png: Path, profile: Path) -> None:
    cmd = [
        browser,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--screenshot={png}",
        "--window-size=1280,900",
        page.as_uri(),
    ]
    subprocess.run(cmd, capture_output=True, timeout=SHOT_TIMEOUT_S, check=False)


def _gray(png: Path) -> npt.NDArray[np.float64]:
    """The screenshot in gray levels, floats in [0, 1], height x width."""
    from matplotlib import image

    pixels = np.asarray(image.imread(png), dtype=np.float64)  # H x W x (3 or 4)
    return np.asarray(pixels[..., :3].mean(axis=2), dtype=np.float64)


@pytest.mark.parametrize("page", PAGES)
def test_a_page_renders_with_visible_text(site: Path, page: str, tmp_path: Path) -> None:
    browser = _browser()
    if browser is None:
        _missing("chromium")
        return
    png = tmp_path / "page.png"
    _screenshot(browser, site / page, png, tmp_path / "profile")
    assert png.is_file() and png.stat().st_size > 0, f"no screenshot of {page}"
    gray = _gray(png)
    assert gray.shape == (900, 1280), gray.shape
    # a blank page has a pixel spread of 0; these pages measured 0.18-0.19 overall, 0.08 in the header bar and
    # 0.17 in the text area
    assert float(gray.std()) > 0.05, f"{page} looks blank (pixel std {float(gray.std()):.3f})"
    header = gray[:48, :600]  # the coloured bar with the site's name
    body = gray[90:400, 280:1000]  # the page's title and first paragraphs
    assert float(header.std()) > 0.02, f"{page}: the header bar shows no text"
    assert float(body.std()) > 0.05, f"{page}: the page's title and text area is uniform"
