"""Out-of-scope detection after training: thresholds chosen on validation, scored on test.

With data that has an out-of-scope class (CLINC150 with `data.include_oos=true`), the best
checkpoint is read once more at the end of the test stage: the training split fits the
Mahalanobis statistics, validation chooses each detector's threshold (and, with `detector=auto`,
the detector), and the test split scores them (`tunelab.base.outofscope`). Logged per detector
`<kind>` in `msp`, `energy`, `mahalanobis`: `test/oos_<kind>_in_scope_acc`, `_recall`,
`_precision`, `_auroc`; the chosen one also as `test/oos_detect_in_scope_acc`, `_recall`,
`_precision`, `_auroc`, and the extra class alone as `test/oos_class_precision` (its in-scope
accuracy and recall are `test/in_scope_acc` and `test/oos_recall`). The chosen detector is
written beside the exported model, where `predict.py` and serving read it.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from typing_extensions import override

from callbacks.limits import split_batches, stoppable
from tunelab.base import outofscope
from tunelab.base.errors import ConfigError
from tunelab.base.pooling import classifier_inputs


def loader(datamodule: Any, split: str) -> Any:
    """A split in batches of similar length, in a fixed order (fast and padding-light)."""
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithPadding

    rows = datamodule.splits[split]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    collate = DataCollatorWithPadding(datamodule.tokenizer)
    return DataLoader(rows.select(order), batch_size=64, collate_fn=collate)


def collect(trainer: L.Trainer, module: Any, split: str, stage: str) -> tuple:
    """Logits, classifier features and labels of the batches `stage` reads of `split`."""
    batches = loader(trainer.datamodule, split)
    limit = split_batches(trainer, stage, len(batches))
    logits, labels = [], []
    module.eval()
    with torch.no_grad(), classifier_inputs(module.model) as features:
        for i, batch in enumerate(stoppable(batches)):
            if i >= limit:
                break
            batch = {k: v.to(module.device) for k, v in batch.items()}
            with trainer.precision_plugin.forward_context():
                logits.append(module(**batch).logits.float().cpu())
            labels.append(batch["labels"].cpu())
    return torch.cat(logits), torch.cat(features).cpu(), torch.cat(labels)


class OutOfScopeDetection(L.Callback):
    """Fit, choose and test out-of-scope detectors on the best checkpoint.

    Args:
        detector: the detector that travels with the model; `auto` takes the kind whose
            threshold ranks best on validation.
        in_scope_drop: None (default) chooses thresholds by in-scope accuracy + OOS recall on
            validation; a fraction (0.005) chooses the highest OOS recall whose validation
            in-scope accuracy stays within it of the extra class alone's.
    """

    def __init__(
        self,
        detector: Literal["auto", "msp", "energy", "mahalanobis"] = "auto",
        in_scope_drop: float | None = None,
    ):
        problems = []
        if detector != "auto" and detector not in outofscope.KINDS:
            problems.append(
                f"callbacks: OutOfScopeDetection detector={detector!r}; use auto, msp, energy "
                "or mahalanobis"
            )
        if in_scope_drop is not None and not 0 <= in_scope_drop < 1:
            problems.append(
                f"callbacks: OutOfScopeDetection in_scope_drop={in_scope_drop}; use a fraction "
                "in [0, 1) (0.005: half a point of in-scope accuracy), or null for the sum rule"
            )
        if problems:
            raise ConfigError(problems)
        self.detector, self.in_scope_drop = detector, in_scope_drop

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        labels = getattr(pl_module, "labels", None)
        if labels is None or labels.out_of_scope_index is None:
            raise ConfigError(
                [
                    "callbacks: OutOfScopeDetection needs data with an out-of-scope class "
                    "(CLINC150: data.include_oos=true)"
                ]
            )

    @override
    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        oos, name = pl_module.labels.out_of_scope_index, pl_module.labels.out_of_scope
        train, val, test = (
            collect(trainer, pl_module, split, stage)
            for split, stage in (("train", "train"), ("validation", "val"), ("test", "test"))
        )
        means, precision = outofscope.fit_gaussian(train[1], train[2], oos)
        fitted, logs = {}, {}
        for kind in outofscope.KINDS:
            detector = outofscope.Detector(kind, 0.0, name, oos, means=means, precision=precision)
            if kind != "mahalanobis":
                detector.means = detector.precision = None
            fitted[kind] = outofscope.choose_threshold(detector, *val, self.in_scope_drop)
            logs |= {f"test/oos_{kind}_{k}": v for k, v in self.score(fitted[kind], test).items()}
        chosen = self.detector
        if chosen == "auto":
            chosen = max(
                fitted, key=lambda k: outofscope.rank(fitted[k].validation, self.in_scope_drop)
            )
        logs |= {
            f"test/oos_detect_{k.split('_', 2)[-1]}": v
            for k, v in logs.items()
            if k.startswith(f"test/oos_{chosen}_")
        }
        predicted = test[0].argmax(dim=-1)
        won = predicted == oos
        logs["test/oos_class_precision"] = outofscope.measure(won, predicted, test[2], oos)[
            "precision"
        ]
        pl_module.log_dict(logs)
        pl_module.extra_exports["out_of_scope"] = fitted[chosen].save

    @staticmethod
    def score(detector: outofscope.Detector, rows: tuple) -> dict[str, float]:
        """In-scope accuracy, OOS recall and precision, AUROC of `detector` on `rows`."""
        logits, features, labels = rows
        flags = detector.flags(logits, features)
        found = outofscope.measure(flags, logits.argmax(dim=-1), labels, detector.oos_index)
        scores = detector.scores(logits, features)
        found["auroc"] = outofscope.auroc(scores, labels == detector.oos_index)
        return found
