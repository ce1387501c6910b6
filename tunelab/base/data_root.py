"""The data root: the folder holding `banking77/`, `clinc150/`, `medquad/`, `pubmedqa/`, ...

It is the one default of every dataset's `data.root` (configs say `root: ${data_root:}`), of the
tests that read the shipped datasets and of `tools.tiny_models`, so a fresh clone finds its data
with nothing exported.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# searched in this order when TUNELAB_DATA_DIR is not set
CANDIDATES = (REPO_ROOT / "data", REPO_ROOT.parent / "shared" / "data")


def data_root() -> str:
    """`TUNELAB_DATA_DIR` when set, else the repository's `data/`, else `../shared/data`.

    The first candidate that exists wins; when none does, the repository's `data/` is returned
    (and loaders then fall back to their Hugging Face Hub ids).
    """
    given = os.environ.get("TUNELAB_DATA_DIR")
    if given:
        return given
    return str(next((path for path in CANDIDATES if path.is_dir()), CANDIDATES[0]))
