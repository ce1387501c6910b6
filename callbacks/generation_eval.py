"""How a decoder answers the test split: ROUGE-L, exact match and length of its generations.

At the end of the test epoch (the best checkpoint is loaded), the first `max_examples` test
prompts are answered greedily (or as configured) and compared with the reference responses:

- `test/rougeL`: mean ROUGE-L F-measure (torchmetrics' `rouge_score`, no stemming);
- `test/exact_match`: share of answers equal to the reference after SQuAD-style normalisation
  (lower case, punctuation and articles dropped, whitespace collapsed);
- `test/gen_len`: mean generated length in words (whitespace-separated: comparable across
  tokenizers; the reference's is in `generations.csv`).

`<run dir>/report/generations.md` (the first `table_rows` examples) and `generations.csv` (every
scored row) are written and logged as the MLflow artifacts `report/`. The metrics are logged in
the test epoch, so they are part of `trainer.test`'s results and of `test_metrics.json`.
"""

from __future__ import annotations

import csv
import re
import string
from pathlib import Path
from typing import Any

import lightning as L
import torch
from typing_extensions import override

from callbacks.generation import greedy_answers
from callbacks.limits import limited_rows

ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation or articles, single spaces."""
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    return " ".join(ARTICLES.sub(" ", text).split())


def score_answers(answers: list[str], references: list[str]) -> dict[str, list[float]]:
    """Per-row ROUGE-L F-measure and exact match (1.0 or 0.0) of answers against references."""
    from torchmetrics.functional.text import rouge_score

    rouge = [
        float(rouge_score(answer, reference, rouge_keys="rougeL")["rougeL_fmeasure"])
        for answer, reference in zip(answers, references, strict=True)
    ]
    exact = [float(normalize(a) == normalize(r)) for a, r in zip(answers, references, strict=True)]
    return {"rougeL": rouge, "exact_match": exact}


def examples_table(rows: list[dict[str, Any]], limit: int) -> str:
    """A Markdown table of the first `limit` rows (prompt tail, reference, generated, ROUGE-L)."""

    def cell(text: str, width: int = 300) -> str:
        text = " ".join(str(text).split()).replace("|", "\\|")
        return text if len(text) <= width else "…" + text[-width:]

    lines = ["| # | prompt (end) | reference | generated | ROUGE-L | exact |"]
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for i, row in enumerate(rows[:limit]):
        lines.append(
            f"| {i} | {cell(row['prompt'], 160)} | {cell(row['reference'])} | "
            f"{cell(row['generated'])} | {row['rougeL']:.3f} | {int(row['exact_match'])} |"
        )
    return "\n".join(lines) + "\n"


class GenerationEval(L.Callback):
    """At the end of the test epoch, answer test prompts and score them against the references.

    Only prompts in the batches the test stage read count (`trainer.limit_test_batches`).

    Args:
        max_examples: test rows answered (the first ones; generation is slow on CPU).
        max_new_tokens: generation length.
        num_beams: beam search width (1: greedy).
        table_rows: rows shown in `report/generations.md`.
    """

    def __init__(
        self,
        max_examples: int = 200,
        max_new_tokens: int = 64,
        num_beams: int = 1,
        table_rows: int = 20,
    ):
        self.max_examples = max_examples
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.table_rows = table_rows

    def evaluate(
        self, module: L.LightningModule, datamodule: Any, most: int | None = None
    ) -> tuple[dict, list[dict]]:
        """Generate for the first `most` (default `max_examples`) test prompts.

        Returns:
            The mean metrics and the per-row table.
        """
        prompts = datamodule.generation_prompts(most or self.max_examples, split="test")
        tokenizer = datamodule.tokenizer
        module.eval()
        with torch.no_grad():
            answers = greedy_answers(
                module.model, tokenizer, prompts, self.max_new_tokens, num_beams=self.num_beams
            )
        references = [p["reference"] for p in prompts]
        scores = score_answers(answers, references)
        lengths = [len(a.split()) for a in answers]
        columns = zip(prompts, references, answers, lengths, strict=True)
        rows = [
            {"prompt": p["prompt"], "reference": r, "generated": a}
            | {"gen_len": n, "ref_len": len(r.split())}
            | {key: values[i] for key, values in scores.items()}
            for i, (p, r, a, n) in enumerate(columns)
        ]
        n = max(len(rows), 1)
        metrics = {f"test/{key}": sum(values) / n for key, values in scores.items()}
        metrics["test/gen_len"] = sum(lengths) / n
        return metrics, rows

    def write(self, folder: Path, rows: list[dict[str, Any]]) -> list[Path]:
        """Write `generations.csv` and `generations.md` into `folder`; returns their paths."""
        folder.mkdir(parents=True, exist_ok=True)
        table, markdown = folder / "generations.csv", folder / "generations.md"
        with open(table, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        markdown.write_text(examples_table(rows, self.table_rows))
        return [table, markdown]

    @override
    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        if not getattr(datamodule, "records", None) or not single_model(trainer, "GenerationEval"):
            return
        most = test_rows(trainer, datamodule, self.max_examples)
        if not most:
            return
        metrics, rows = self.evaluate(pl_module, datamodule, most)
        for key, value in metrics.items():  # into trainer.test's results and test_metrics.json
            pl_module.log(key, value, rank_zero_only=True)
        paths = self.write(Path(trainer.default_root_dir) / "report", rows)
        log_report_files(trainer.logger, paths)


def test_rows(trainer: L.Trainer, datamodule: Any, most: int) -> int:
    """At most `most` test records, within the rows the test stage read (`limit_test_batches`)."""
    batch_size = getattr(getattr(datamodule, "data", None), "eval_batch_size", 1)
    return min(most, limited_rows(trainer, "test", len(datamodule.records["test"]), batch_size))


def single_model(trainer: L.Trainer, name: str) -> bool:
    """Whether this process holds the whole model and is rank zero (where the evaluation runs).

    Under FSDP or DeepSpeed the weights are sharded, so a forward pass on one rank alone would
    wait forever for the others: the evaluation is skipped with a warning.
    """
    if type(trainer.strategy).__name__ in ("FSDPStrategy", "DeepSpeedStrategy"):
        from lightning.pytorch.utilities import rank_zero_warn

        rank_zero_warn(f"{name} skipped: the model is sharded; evaluate the exported model instead")
        return False
    return trainer.is_global_zero


def log_report_files(logger: Any, paths: list[Path]) -> None:
    """Log files as MLflow artifacts under `report/` (when the logger is MLflow)."""
    if logger is not None and hasattr(logger.experiment, "log_artifact"):
        for path in paths:
            logger.experiment.log_artifact(logger.run_id, str(path), artifact_path="report")
