"""MkDocs hook: publish the benchmark plots and screenshots under `assets/results/`.

The pictures stay where the scripts that regenerate them write them (`benchmarks/results/`);
pages refer to them as `assets/results/<name>.png` (relative to `docs/`), and this hook adds
each one to the site's files, so no copy lives in `docs/` and a missing picture fails
`mkdocs build --strict` like a missing page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def on_files(files: Files, config: Any) -> Files:
    """Add every picture of `benchmarks/results/` to the site under `assets/results/`."""
    for picture in sorted(RESULTS.glob("*.png")):
        uri = f"assets/results/{picture.name}"
        files.append(File.generated(config, uri, abs_src_path=str(picture)))
    return files
