"""Take the screenshots of ``dualdb studio`` shown in the README and docs/studio.md.

    .venv/bin/python scripts/studio_screenshot.py    # → docs/studio.png, docs/studio-graph.png
    .venv/bin/python scripts/studio_screenshot.py --url URL --out-dir /tmp/shots

Without ``--url`` it uses a throwaway SQLite file, migrated and seeded (``dualdb seed``); with
one, it seeds that database first (idempotent).  The studio runs in-process on a free
127.0.0.1 port; Debian's headless Chromium (``/usr/bin/chromium``) takes the pictures.
The test suite runs this script on both backends so it cannot rot.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

import dualdb
from dualdb.config import resolve
from dualdb.migrations import upgrade
from dualdb.seed import seed, seed_id
from dualdb.studio import running

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
DOCS = Path(__file__).resolve().parent.parent / "docs"

#: File name → page of the studio (relative to its URL) and window width (wide enough for
#: every column of the tasks list).
SHOTS = {
    "studio.png": ("studio/tasks/list", 2100),
    "studio-graph.png": (
        f"studio/tasks/action/dependency-graph?pks={seed_id('task:keyframe-2')}",
        1400,
    ),
}


def take(url: str, out_dir: Path) -> list[Path]:
    """Seed the database at ``url``, serve the studio over it, and screenshot :data:`SHOTS`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with dualdb.connect(url) as db:
        seed(db, allow_remote=True)
        with running(db, read_only=False) as base, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                for name, (path, width) in SHOTS.items():
                    page = browser.new_page(viewport={"width": width, "height": 400})
                    page.goto(base + path)
                    page.wait_for_load_state("networkidle")
                    target = out_dir / name
                    page.screenshot(path=str(target), full_page=True)
                    written.append(target)
            finally:
                browser.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="database to show (default: a fresh seeded SQLite file)")
    parser.add_argument("--out-dir", type=Path, default=DOCS, help="where to write the PNGs")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url
        if url is None:
            url = f"sqlite:///{Path(tmp) / 'studio.db'}"
            upgrade(resolve(url))
        for path in take(url, args.out_dir):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
