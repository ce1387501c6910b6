"""Save the first training batches' label masks as text: what is trained on, what is not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from typing_extensions import override

from tunelab.base.prompting import render_mask

HEADER = (
    "Label mask preview: tokens inside «» are trained on (labels = token ids); everything else\n"
    "is prompt (labels = -100). Packed rows show several examples one after another.\n"
)


class MaskPreviewCallback(L.Callback):
    """Write `<run dir>/mask_preview.txt` from the first `num_batches` training batches.

    The file is logged to MLflow (artifact `mask_preview.txt`) when the logger is MLflow.

    Args:
        num_batches: how many of the first training batches to render.
        max_rows: rows rendered per batch.
    """

    def __init__(self, num_batches: int = 1, max_rows: int = 4):
        self.num_batches = num_batches
        self.max_rows = max_rows
        self.sections: list[str] = []
        self.written = False

    @override
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.written or batch_idx >= self.num_batches:
            return
        tokenizer = trainer.datamodule.tokenizer
        ids, labels = batch["input_ids"].tolist(), batch["labels"].tolist()
        for row in range(min(len(ids), self.max_rows)):
            text = render_mask(tokenizer, ids[row], labels[row], tokenizer.pad_token_id)
            trained = sum(label != -100 for label in labels[row])
            self.sections.append(
                f"--- batch {batch_idx} row {row}: {trained} trained tokens ---\n{text}\n"
            )
        if batch_idx == self.num_batches - 1:
            self.write(trainer)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.write(trainer)

    def write(self, trainer: L.Trainer) -> None:
        """Write (once) and log the preview file."""
        if self.written or not self.sections or not trainer.is_global_zero:
            return
        path = Path(trainer.default_root_dir) / "mask_preview.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(HEADER + "\n".join(self.sections))
        logger = trainer.logger
        if logger is not None and hasattr(logger.experiment, "log_artifact"):
            logger.experiment.log_artifact(logger.run_id, str(path))
        self.written = True
