"""Sequence classification: an encoder with a classification head over a fixed set of labels.

Trained with cross-entropy (optionally label-smoothed), measured by accuracy and macro-F1 (with
an out-of-scope class: in-scope accuracy and out-of-scope recall apart, as Larson et al. 2019),
served as `text` -> `label`, `probability`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from tunelab.base.plugin import Labels, ModelProbe, TaskConfig


class SequenceClassification(TaskConfig):
    """Text in, one of the dataset's labels out."""

    # AutoModelForSequenceClassification that honours `classifier_pooling` (cls or mean)
    auto_model: ClassVar[str] = "tunelab.base.pooling.AutoModelForPooledClassification"
    peft_task_type: ClassVar[str] = "SEQ_CLS"
    data_family: ClassVar[str] = "classification"
    trains_head: ClassVar[bool] = True
    input_columns: ClassVar[tuple[str, ...]] = ("text",)
    output_columns: ClassVar[tuple[str, ...]] = ("label", "probability")

    monitor: str = "val/acc"
    mode: Literal["min", "max"] = "max"
    # the training loss against (1 - s) one-hot + s uniform targets (Szegedy et al. 2016; HF
    # Trainer's label_smoothing_factor); validation and test losses stay unsmoothed
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    # what the classifier reads: `cls`, the first token's vector (BERT: through its pooler), or
    # `mean`, the attention-masked mean of the last hidden states, how sentence encoders such as
    # all-MiniLM-L6-v2 were trained (tunelab.base.pooling; saved in the model's config.json)
    pooling: Literal["cls", "mean"] = "cls"
    # R-Drop (Liang et al. 2021): each training batch passes twice (two dropout masks) and the
    # loss adds `rdrop` x the symmetric KL between the two predictions; 0: one pass
    rdrop: float = Field(default=0.0, ge=0)

    def check_model(self, probe: ModelProbe, problems: list[str]) -> None:
        """Mean pooling needs a classifier head named `classifier` (the BERT family)."""
        heads = [n for n in probe.linear_names if n.split(".")[0] == "classifier"]
        if self.pooling == "mean" and not heads:
            problems.append(
                f"task.pooling=mean: {probe.name_or_path} ({probe.model_type}) has no "
                "`classifier` head to feed the mean of its tokens; use task.pooling=cls"
            )

    def model_kwargs(self, labels: list[str] | None) -> dict[str, Any]:
        """The label maps of the classification head, and its pooling when not the default."""
        names = list(labels or [])
        found = {
            "num_labels": len(names),
            "id2label": dict(enumerate(names)),
            "label2id": {name: i for i, name in enumerate(names)},
        }
        return found | ({"classifier_pooling": "mean"} if self.pooling == "mean" else {})

    def forward(self, model: Any, batch: dict[str, Any]) -> Any:
        """The outputs of one batch; with `rdrop` in training, a second pass's logits beside."""
        outputs = model(**batch)
        if self.rdrop and model.training:
            outputs["rdrop_logits"] = model(**batch).logits
        return outputs

    def loss(self, outputs: Any, batch: dict[str, Any]) -> Any:
        """Cross-entropy (label-smoothed when set), plus the R-Drop term with two passes."""
        import torch.nn.functional as F

        def entropy(logits: Any) -> Any:
            return F.cross_entropy(
                logits.float(), batch["labels"], label_smoothing=self.label_smoothing
            )

        second = outputs.get("rdrop_logits")
        if second is None:
            return entropy(outputs.logits) if self.label_smoothing else outputs.loss
        first, second = F.log_softmax(outputs.logits.float(), -1), F.log_softmax(second.float(), -1)
        kl = F.kl_div(first, second, log_target=True, reduction="batchmean")
        kl = (kl + F.kl_div(second, first, log_target=True, reduction="batchmean")) / 2
        both = (entropy(outputs.logits) + entropy(outputs["rdrop_logits"])) / 2
        return both + self.rdrop * kl

    def metrics(self, labels: Labels | None) -> dict[str, Any]:
        """Accuracy and macro-F1; in-scope accuracy and out-of-scope recall with an OOS class."""
        from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

        from tunelab.base.metrics import ClassRecall, InScopeAccuracy

        n = len(labels.names) if labels else 0
        found = {
            "acc": MulticlassAccuracy(num_classes=n, average="micro"),
            "f1": MulticlassF1Score(num_classes=n, average="macro"),
        }
        oos = labels.out_of_scope_index if labels else None
        if oos is not None:
            found |= {"in_scope_acc": InScopeAccuracy(oos), "oos_recall": ClassRecall(oos)}
        return found

    def metric_inputs(self, outputs: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        """Predicted and true class ids."""
        return outputs.logits.argmax(dim=-1), batch["labels"]

    def predict(self, predictor: Any, rows: list[dict[str, Any]], options: dict) -> list[dict]:
        """The most probable label and its probability per row.

        An export with an out-of-scope detector beside it (`out_of_scope.json`, written by
        `callbacks.out_of_scope`) answers its label (`oos`) where the detector fires; the
        probability stays the classifier's top one.
        """
        import torch

        from tunelab.base.pooling import classifier_inputs

        texts = [str(row["text"]) for row in rows]
        batch = predictor.tokenizer(
            texts,
            truncation=True,
            max_length=predictor.info["max_length"],
            padding=True,
            return_tensors="pt",
        )
        detector = _detector(predictor)
        with torch.no_grad(), classifier_inputs(predictor.model, detector) as features:
            logits = predictor.model(**batch).logits.float()
        probs = torch.softmax(logits, dim=-1)
        best, index = probs.max(dim=-1)
        labels = predictor.info["labels"]
        names = [labels[i] if labels else str(i) for i in index.tolist()]
        if detector is not None:
            flags = detector.flags(logits, features[0] if features else None).tolist()
            names = [detector.label if flag else n for n, flag in zip(names, flags, strict=True)]
        return [
            {"label": name, "probability": float(p)}
            for name, p in zip(names, best.tolist(), strict=True)
        ]

    def signature(self) -> Any:
        """`text` in; `label` and `probability` out."""
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, Schema

        outputs = Schema([ColSpec("string", "label"), ColSpec("double", "probability")])
        return ModelSignature(Schema([ColSpec("string", "text")]), outputs)

    def examples(self, datamodule: Any, n: int = 3) -> list[dict[str, Any]]:
        """The first test texts, decoded from the prepared split."""
        ids = datamodule.splits["test"][:n]["input_ids"]
        texts = datamodule.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return [{"text": text} for text in texts]


def _detector(predictor: Any) -> Any:
    """The out-of-scope detector saved beside the predictor's export (read once), or None."""
    if not hasattr(predictor, "out_of_scope"):
        from tunelab.base.outofscope import read_detector

        folder = getattr(predictor, "folder", None)
        predictor.out_of_scope = read_detector(folder) if folder else None
    return predictor.out_of_scope
