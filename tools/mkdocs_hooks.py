"""MkDocs hook: publish the benchmark pictures and the notebook without copying them.

The pictures stay where the scripts that regenerate them write them (`benchmarks/results/`),
the notebook in `notebooks/`; pages refer to them as `assets/results/<name>.png` and
`assets/notebooks/<name>.ipynb` (relative to `docs/`), and this hook adds each one to the site's
files, so no copy lives in `docs/` and a missing one fails `mkdocs build --strict` like a
missing page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = {
    "assets/results": ROOT / "benchmarks" / "results",
    "assets/notebooks": ROOT / "notebooks",
}
PATTERNS = ("*.png", "*.ipynb")


def on_files(files: Files, config: Any) -> Files:
    """Add the pictures and notebooks to the site under `assets/`."""
    for prefix, folder in PUBLISHED.items():
        for pattern in PATTERNS:
            for path in sorted(folder.glob(pattern)):
                uri = f"{prefix}/{path.name}"
                files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files
