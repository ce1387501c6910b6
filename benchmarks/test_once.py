"""Score the chosen validation-only run on the test split, once, into that same MLflow run.

    python benchmarks/test_once.py outputs/<name>/<timestamp>

Recipe selection runs each candidate with `trainer.limit_test_batches=0` (the test split unread)
and compares `val/*` only. This takes the chosen candidate's run folder, rebuilds its data and
module from the folder's `config.yaml`, tests its best checkpoint (`checkpoints/best-*.ckpt`)
and logs the test metrics and evaluation report into the candidate's MLflow run, tagged
`tunelab.tested_once`. A folder whose run already read the test split, or was tested here
before, is refused: the test split is scored once per final recipe.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TAG = "tunelab.tested_once"


def best_checkpoint(run_dir: Path) -> Path:
    """The run's best-validation checkpoint, or exit with `error:` when it is not there."""
    found = sorted((run_dir / "checkpoints").glob("best-*.ckpt"))
    if len(found) != 1:
        sys.exit(f"error: {run_dir}/checkpoints holds {len(found)} best-*.ckpt files, not one")
    return found[0]


def untested_config(run_dir: Path) -> dict:
    """The run's resolved config with the test split switched on; refuses a tested run."""
    config = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    if config["trainer"]["limit_test_batches"] != 0:
        sys.exit(f"error: {run_dir} read the test split already (trainer.limit_test_batches != 0)")
    if (run_dir / "test_once.json").exists():
        sys.exit(f"error: {run_dir} was tested once already: {run_dir / 'test_once.json'}")
    config["trainer"]["limit_test_batches"] = 1.0
    return config


def test_once(run_dir: Path) -> dict[str, float]:
    """Test `run_dir`'s best checkpoint and log the result into its MLflow run."""
    from tunelab.config.validate import validate
    from tunelab.run.build import build_data_and_module, build_trainer
    from tunelab.tracking import store as tracking

    checkpoint, config = best_checkpoint(run_dir), untested_config(run_dir)
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    run = validate(OmegaConf.create(config))
    datamodule, module = build_data_and_module(run)
    logger = tracking.make_logger(config, run_id=run_id)
    trainer, _ = build_trainer(run, run_dir, logger, [])
    [metrics] = trainer.test(module, datamodule=datamodule, ckpt_path=checkpoint, verbose=False)
    record = {"checkpoint": checkpoint.name, "metrics": metrics}
    (run_dir / "test_once.json").write_text(json.dumps(record, indent=2))
    logger.experiment.log_artifact(run_id, str(run_dir / "test_once.json"))
    logger.experiment.set_tag(run_id, TAG, checkpoint.name)
    logger.finalize("success")
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="the chosen candidate's run folder")
    metrics = test_once(parser.parse_args().run_dir)
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
