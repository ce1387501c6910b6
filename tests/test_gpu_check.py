"""benchmarks/gpu_check.py: the no-GPU skip line, and the tiny CPU `--smoke` code path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def run_script(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so the skip path is taken on every machine
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_skips_without_gpu():
    proc = run_script()
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines == ["gpu_check: skipped: no CUDA GPU (torch.cuda.is_available() is False)"]


@pytest.mark.slow  # over 10 s: the default run stays under 10 minutes
def test_smoke_runs_on_cpu(tmp_path):
    out = tmp_path / "results.json"
    proc = run_script("--smoke", "--models", "mistral", "--out", str(out), timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = {row["method"]: row for row in json.loads(out.read_text())["results"]}
    assert set(rows) == {"full", "lora", "qlora"}
    for method in ("full", "lora"):
        assert rows[method]["status"] == "ok", rows[method]
        assert rows[method]["tokens_per_s"] > 0
        assert rows[method]["trainable_params"] > 0
    assert rows["lora"]["trainable_params"] < rows["full"]["trainable_params"]
    assert rows["qlora"]["status"] == "ok", rows["qlora"]  # bitsandbytes >= 0.48: nf4 on CPU
    assert "| mistral | lora |" in proc.stdout
    assert "torchtune" in proc.stdout
