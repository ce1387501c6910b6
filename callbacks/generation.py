"""Greedy answers to a few fixed validation prompts after each validation, logged to MLflow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from typing_extensions import override

from callbacks.limits import limited_rows, stoppable


def greedy_answers(
    model: Any, tokenizer: Any, prompts: list[dict[str, Any]], max_new_tokens: int, **options: Any
) -> list[str]:
    """Greedy continuations (new tokens only, special tokens dropped) of each prompt.

    `options` go to `generate` (e.g. `num_beams=4`, or `do_sample=True` with a `temperature`).
    """
    answers = []
    device = next(model.parameters()).device
    for prompt in stoppable(prompts):  # a signal stops between two prompts
        ids = torch.tensor([prompt["input_ids"]], device=device)
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            **({"do_sample": False} | options),
        )
        answers.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    return answers


class GenerationCallback(L.Callback):
    """At each validation end, answer `num_prompts` fixed validation prompts greedily.

    The table (epoch, step, prompt, reference, generated) is written to
    `<run dir>/generations/epoch_<n>.json` and logged with `MlflowClient.log_table` under
    `generations/` when the logger is MLflow. Sanity-check validation is skipped.

    Args:
        num_prompts: how many of the first validation examples to answer.
        max_new_tokens: generation length.
    """

    def __init__(self, num_prompts: int = 3, max_new_tokens: int = 48):
        self.num_prompts = num_prompts
        self.max_new_tokens = max_new_tokens
        self.prompts: list[dict[str, Any]] | None = None

    def table(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, list]:
        """Generate for the fixed prompts; a column-oriented table."""
        datamodule = trainer.datamodule
        if self.prompts is None:  # within the rows validation reads (`limit_val_batches`)
            rows = len(datamodule.records["validation"])
            size = getattr(getattr(datamodule, "data", None), "eval_batch_size", 1)
            most = min(self.num_prompts, limited_rows(trainer, "val", rows, size))
            self.prompts = datamodule.generation_prompts(most)
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            answers = greedy_answers(
                pl_module.model, datamodule.tokenizer, self.prompts, self.max_new_tokens
            )
        pl_module.train(was_training)
        n = len(answers)
        return {
            "epoch": [trainer.current_epoch] * n,
            "step": [trainer.global_step] * n,
            "prompt": [p["prompt"] for p in self.prompts],
            "reference": [p["reference"] for p in self.prompts],
            "generated": answers,
        }

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        table = self.table(trainer, pl_module)
        name = f"epoch_{trainer.current_epoch}_step_{trainer.global_step}.json"
        folder = Path(trainer.default_root_dir) / "generations"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(table, indent=2))
        logger = trainer.logger
        if logger is not None and hasattr(logger.experiment, "log_table"):
            logger.experiment.log_table(
                logger.run_id, data=table, artifact_file=f"generations/{name}"
            )
