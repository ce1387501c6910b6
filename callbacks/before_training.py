"""The held-out metrics of the model as it starts, logged beside the trained model's.

At the start of a fresh fit (not a resumed one: its weights have trained), the task's metrics
on the test split (the validation split when there is no test split) are computed with the model
as it starts and logged to the run as `test/before/<name>`, e.g. `test/before/rewards/accuracies`
and `test/before/loss`; when the data has answer options (PubMedQA), option scoring's decision
accuracy as `test/before/decision_acc`. The test stage later logs the trained model's
`test/<name>` and `test/decision_acc` into the same MLflow run: before and after side by side
(SFT -> DPO: the SFT model, then the model DPO made of it).

The task opts in with a field `evaluate_before` (preference tuning: `task.evaluate_before`).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torchmetrics import MeanMetric, MetricCollection
from typing_extensions import override

from callbacks.option_scoring import OptionScoring

PREFIX = "test/before/"


def split_metrics(pl_module: Any, loader: Any) -> dict[str, float]:
    """The task's metrics and mean loss over `loader`, with the model in eval mode."""
    task, model = pl_module.task, pl_module.model
    metrics = MetricCollection(task.metrics(None), prefix=PREFIX)
    loss = MeanMetric()
    with torch.no_grad():
        for batch in loader:
            batch = {k: v.to(pl_module.device) for k, v in batch.items() if torch.is_tensor(v)}
            outputs = task.forward(model, batch)
            metrics.update(*task.metric_inputs(outputs, batch))
            loss.update(outputs.loss.detach().float().cpu())
    found = {k: float(v) for k, v in metrics.compute().items()}
    return found | {f"{PREFIX}loss": float(loss.compute())}


def decision_accuracy(pl_module: Any, datamodule: Any, max_examples: int) -> dict[str, float]:
    """Option scoring's decision accuracy on the test records, when the data has options."""
    data = getattr(datamodule, "data", None)
    options = data.answer_options() if hasattr(data, "answer_options") else None
    if not options or "test" not in getattr(datamodule, "records", {}):
        return {}
    results = OptionScoring(max_examples).evaluate(pl_module, datamodule, options)
    if not results:
        return {}
    right = sum(r["gold"] == r["predicted"] for r in results)
    return {f"{PREFIX}decision_acc": right / len(results)}


class BeforeTraining(L.Callback):
    """Log `test/before/*` at the start of a fresh fit when the task asks for it.

    Args:
        max_examples: test records whose answer options are scored (as `OptionScoring`).
    """

    def __init__(self, max_examples: int = 500):
        self.max_examples = max_examples

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        task, datamodule = pl_module.task, trainer.datamodule
        if not getattr(task, "evaluate_before", False) or datamodule is None or trainer.ckpt_path:
            return
        split = "test" if "test" in datamodule.splits else "validation"
        was_training = pl_module.training
        pl_module.eval()
        found = split_metrics(pl_module, datamodule.ordered_loader(split))
        found |= decision_accuracy(pl_module, datamodule, self.max_examples)
        pl_module.train(was_training)
        if trainer.logger is not None and trainer.is_global_zero:
            trainer.logger.log_metrics(found, step=0)
