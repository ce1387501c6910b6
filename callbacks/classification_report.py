"""Where a classifier goes wrong: a report on the test split, written after the test stage.

`<run dir>/report/` (and the MLflow artifacts `report/`) gets:
- `per_class.csv`: precision, recall, F1 and support of every class (torchmetrics);
- `confused_pairs.csv` and `confused_pairs.png`: the most frequent (true -> predicted) mistakes,
  readable at 77-150 classes where a full confusion-matrix picture is not;
- `reliability.png` and the headline metric `test/ece`: expected calibration error (15 bins);
- `confident_mistakes.md`: the mistakes the model was surest of, with their texts.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning as L
import torch
from typing_extensions import override

from callbacks.limits import limited_batches

BINS = 15


def collect(module: Any, loader: Any) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """Class probabilities, true labels and input ids of every row the loader yields."""
    probs, labels, ids = [], [], []
    module.eval()
    with torch.no_grad():
        for batch in loader:
            batch = {k: v.to(module.device) for k, v in batch.items()}
            logits = module(**batch).logits.float()
            probs.append(logits.softmax(dim=-1).cpu())
            labels.append(batch["labels"].cpu())
            mask = batch["attention_mask"].bool().cpu()
            ids += [
                row[keep].tolist() for row, keep in zip(batch["input_ids"].cpu(), mask, strict=True)
            ]
    return torch.cat(probs), torch.cat(labels), ids


def per_class(probs: torch.Tensor, labels: torch.Tensor, names: list[str]) -> list[dict]:
    """Precision, recall, F1 and support per class."""
    from torchmetrics.functional.classification import (
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
    )

    preds, n = probs.argmax(dim=-1), len(names)
    scores = [
        f(preds, labels, num_classes=n, average=None)
        for f in (multiclass_precision, multiclass_recall, multiclass_f1_score)
    ]
    support = torch.bincount(labels, minlength=n)
    return [
        {
            "class": name,
            "precision": float(p),
            "recall": float(r),
            "f1": float(f),
            "support": int(s),
        }
        for name, p, r, f, s in zip(names, *scores, support, strict=True)
    ]


def confused_pairs(probs: torch.Tensor, labels: torch.Tensor, names: list[str], top: int) -> list:
    """The `top` most frequent (true, predicted, count) mistakes."""
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    matrix = multiclass_confusion_matrix(probs.argmax(dim=-1), labels, num_classes=len(names))
    matrix.fill_diagonal_(0)
    counts, flat = matrix.flatten().topk(min(top, matrix.numel()))
    n = len(names)
    return [
        (names[i // n], names[i % n], int(c)) for c, i in zip(counts, flat, strict=True) if c > 0
    ]


def reliability(probs: torch.Tensor, labels: torch.Tensor) -> tuple[float, list[tuple]]:
    """ECE (torchmetrics) and per-bin (confidence, accuracy, count) for the diagram."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    ece = float(multiclass_calibration_error(probs, labels, probs.shape[1], n_bins=BINS))
    confidence, preds = probs.max(dim=-1)
    bins = torch.clamp((confidence * BINS).long(), max=BINS - 1)
    rows = []
    for b in range(BINS):
        inside = bins == b
        if inside.any():
            accuracy = (preds[inside] == labels[inside]).float().mean()
            rows.append((float(confidence[inside].mean()), float(accuracy), int(inside.sum())))
    return ece, rows


def confident_mistakes(probs, labels, texts: list[str], names: list[str], top: int) -> str:
    """A Markdown table of the `top` wrong predictions with the highest confidence."""
    confidence, preds = probs.max(dim=-1)
    wrong = (preds != labels).nonzero().flatten()
    order = wrong[confidence[wrong].argsort(descending=True)][:top]
    lines = ["| confidence | true | predicted | text |", "| --- | --- | --- | --- |"]
    for i in order.tolist():
        text = texts[i].replace("|", "\\|")
        lines.append(f"| {confidence[i]:.3f} | {names[labels[i]]} | {names[preds[i]]} | {text} |")
    return "\n".join(lines) + "\n"


def plot_pairs(pairs: list, path: Path) -> None:
    """Horizontal bars: one per confused pair, most frequent on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 0.3 * len(pairs) + 1))
    axes.barh([f"{t} -> {p}" for t, p, _ in reversed(pairs)], [c for *_, c in reversed(pairs)])
    axes.set_xlabel("test rows")
    axes.set_title("Most confused pairs (true -> predicted)")
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def plot_reliability(rows: list[tuple], ece: float, path: Path) -> None:
    """Accuracy against confidence per bin, beside the diagonal of perfect calibration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 5))
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    axes.plot([r[0] for r in rows], [r[1] for r in rows], marker="o", label="model")
    axes.set(xlabel="confidence", ylabel="accuracy", title=f"Reliability (ECE {ece:.3f})")
    axes.legend()
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


class ClassificationReport(L.Callback):
    """After testing, write and log the classification report of the test split.

    It reads the batches the test stage read (`trainer.limit_test_batches`: `1` is one batch).

    Args:
        top: how many confused pairs and confident mistakes to list.
    """

    def __init__(self, top: int = 20):
        self.top = top

    @override
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        if not trainer.is_global_zero or not getattr(datamodule, "labels", None):
            return
        loader = limited_batches(datamodule.test_dataloader(), trainer, "test")
        probs, labels, ids = collect(pl_module, loader)
        texts = datamodule.tokenizer.batch_decode(ids, skip_special_tokens=True)
        folder = Path(trainer.default_root_dir) / "report"
        ece = self.write(folder, probs, labels, texts, list(datamodule.labels))
        logger = trainer.logger
        if logger is not None and hasattr(logger.experiment, "log_artifacts"):
            logger.log_metrics({"test/ece": ece})
            logger.experiment.log_artifacts(logger.run_id, str(folder), artifact_path="report")

    def write(self, folder: Path, probs, labels, texts: list[str], names: list[str]) -> float:
        """Write every report file into `folder`; returns the ECE."""
        folder.mkdir(parents=True, exist_ok=True)
        rows = per_class(probs, labels, names)
        with open(folder / "per_class.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        pairs = confused_pairs(probs, labels, names, self.top)
        with open(folder / "confused_pairs.csv", "w", newline="") as handle:
            csv.writer(handle).writerows([("true", "predicted", "count"), *pairs])
        if pairs:
            plot_pairs(pairs, folder / "confused_pairs.png")
        ece, bins = reliability(probs, labels)
        plot_reliability(bins, ece, folder / "reliability.png")
        mistakes = confident_mistakes(probs, labels, texts, names, self.top)
        (folder / "confident_mistakes.md").write_text(mistakes)
        return ece
