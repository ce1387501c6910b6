"""The text-classification family's LightningDataModule: any `ClassificationData` loader."""

from __future__ import annotations

from typing import Any

import lightning as L
from datasets import DatasetDict
from torch.utils.data import DataLoader
from typing_extensions import override

from datamodules import audit_view, common, prepared
from datamodules.batching import grouped, length_grouped_sampler
from datamodules.labels import encode_labels, label_names
from datamodules.resumable import shuffled, training_loader
from tunelab.base.audit import hook as audit_hook
from tunelab.base.errors import DataError
from tunelab.base.plugin import DataConfig

SPLITS = ("train", "validation", "test")


class ClassificationDataModule(L.LightningDataModule):
    """A loader's text/label splits -> tokenised, dynamically padded batches.

    The loader (`data.load`) decides the splits; this module checks them, subsamples train
    (`max_train_samples`), turns labels into ids, tokenises, and batches texts of similar length
    together (`group_by_length`). The test split is never used for selection.

    Args:
        data: the validated dataset config (a `ClassificationData` subclass with `load`).
        tokenizer: tokenizer folder or hub id (the model's `name_or_path`).
        max_length: tokens kept per text.
        seed: seed of the loader's carved splits and of subsampling.

    Attributes:
        labels: the class names in id order (after `setup`).
        out_of_scope: the class meaning "none of the intents", or None.
        splits: the tokenised `train`/`validation`/`test` datasets (after `setup`; prepared
            once per machine and cached, see `datamodules.prepared`).
    """

    def __init__(self, *, data: DataConfig, tokenizer: str, max_length: int, seed: int):
        super().__init__()
        self.save_hyperparameters(
            {"data": data.dump(), "tokenizer": tokenizer, "max_length": max_length, "seed": seed},
            logger=False,
        )
        self.data, self.tokenizer_name = data, tokenizer
        self.max_length, self.seed = max_length, seed
        self.labels: list[str] = []
        self.out_of_scope: str | None = data.out_of_scope_label()
        self.splits: DatasetDict | None = None
        self.audit: dict[str, Any] | None = None  # leak count, audit, removed rows (setup)
        self._tokenizer: Any = None

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer, loaded once."""
        if self._tokenizer is None:
            self._tokenizer = common.load_tokenizer(self.tokenizer_name)
        return self._tokenizer

    def _checked(self, data: DatasetDict) -> DatasetDict:
        """The loader's output, checked: the three splits, each with `text` and `label`."""
        missing = [s for s in SPLITS if s not in data]
        if missing:
            raise DataError(
                f"{type(self.data).__name__}.load returned no {', '.join(missing)} split; "
                f"a classification loader returns {list(SPLITS)}"
            )
        for split in SPLITS:
            if not {"text", "label"} <= set(data[split].column_names):
                raise DataError(
                    f"{type(self.data).__name__}.load returned a {split} split with columns "
                    f"{data[split].column_names}; a classification loader returns `text` and "
                    "`label`"
                )
        data = DatasetDict({s: data[s].select_columns(["text", "label"]) for s in SPLITS})
        common.check_not_empty(data)
        return data

    def _subsample(self, data: DatasetDict) -> DatasetDict:
        n = self.data.max_train_samples
        if n and n < len(data["train"]):
            data["train"] = data["train"].shuffle(seed=self.seed).select(range(n))
        return data

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.splits is None:
            parts = prepared.key_parts(self)  # the first process builds, the others load
            root = prepared.cache_root()
            self.splits, extras = prepared.prepare_once(parts, self._prepare, root)
            self.labels, self.audit = list(extras["labels"]), extras["audit"]
            audit_hook.announce(self.audit, self.data)
        audit_hook.log_to_run(self)  # once a trainer is attached: the run's MLflow run

    def raw_splits(self) -> tuple[DatasetDict, list[str]]:
        """Load, check, encode labels and subsample: the text/label splits and the class names."""
        raw, names = self.data.load(self.seed)
        raw = self._checked(raw)
        labels = list(names or label_names(raw, "label"))
        if self.out_of_scope is not None and self.out_of_scope not in labels:
            raise DataError(
                f"the out-of-scope class '{self.out_of_scope}' is not one of the labels"
            )
        data = self._subsample(encode_labels(raw, "label", labels))
        common.check_not_empty(data)
        return data, labels

    def view_for_audit(self) -> Any:
        """What would train (before any `data.drop_*`), as rows for `python audit.py`."""
        data, labels = self.raw_splits()
        return audit_view.classification_view(self, data, labels)

    def _prepare(self) -> prepared.Prepared:
        """Raw splits, audited and cleaned (`data.audit`, `data.drop_*`), tokenised."""
        data, labels = self.raw_splits()
        measure = audit_hook.needs_audit(self.data)
        view = audit_view.classification_view(self, data, labels, measure)
        keep, record = audit_view.cleaned(view, self.data)
        if len(keep) < len(data["train"]):
            data["train"] = data["train"].select(keep)
            common.check_not_empty(data)
        if self.data.refit:  # after the audit, which would count validation rows as leaked
            from datasets import concatenate_datasets

            data["train"] = concatenate_datasets([data["train"], data["validation"]])
        splits = data.map(
            lambda batch: self.tokenizer(
                batch["text"], truncation=True, max_length=self.max_length
            ),
            batched=True,
            remove_columns=["text"],
            desc="tokenising",
        )
        return splits, {"labels": labels, "audit": record}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        from transformers import DataCollatorWithPadding

        assert self.splits is not None, "call setup() first"
        size = self.data.batch_size if split == "train" else self.data.eval_batch_size
        kwargs = {
            "batch_size": size,
            "collate_fn": DataCollatorWithPadding(self.tokenizer),
            "num_workers": self.data.num_workers,
        }
        ds = self.splits[split]
        if shuffle:  # an order a resumed run replays (see datamodules.resumable)
            order = shuffled(len(ds))
            if self.data.group_by_length:
                order = grouped(ds, size)
            return training_loader(self, ds, order, **kwargs)
        sampler = length_grouped_sampler(ds, size, False) if self.data.group_by_length else None
        return DataLoader(ds, sampler=sampler, **kwargs)

    @override
    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    @override
    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", shuffle=False)

    @override
    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
