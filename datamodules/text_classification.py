"""Text classification from any CSV/JSON/JSONL/Parquet file(s) or Hugging Face Hub id."""

from __future__ import annotations

from typing import Any

import lightning as L
from datasets import DatasetDict
from torch.utils.data import DataLoader
from typing_extensions import override

from datamodules import common
from datamodules.labels import encode_labels, label_names


class TextClassificationDataModule(L.LightningDataModule):
    """Text + label columns -> tokenised, dynamically padded batches.

    Validation comes from a `validation` split when the source has one, else it is carved from
    train (stratified, seeded); the same for test. The test split is never used for selection.

    Args:
        name: the dataset's config name (for tags).
        root: the data root (`TUNELAB_DATA_DIR`), searched for relative `path`s.
        path: a file, a folder of `train.*`/`validation.*`/`test.*` files, or a hub id.
        text_column: the input text column.
        label_column: the label column (strings, ints or `ClassLabel`).
        tokenizer: tokenizer folder or hub id (the model's `name_or_path`).
        max_length: tokens kept per text.
        seed: seed of the carved splits and subsampling.
        hub_id: hub dataset to use when `path` is not found locally.
        val_size: validation fraction (< 1) or row count carved from train.
        test_size: test fraction or row count carved from train when there is no test split.
        max_train_samples: keep at most this many (shuffled) training rows.
        batch_size: training batch size.
        eval_batch_size: validation/test batch size.
        num_workers: DataLoader worker processes.
        group_by_length: batch texts of similar length together (shuffled megabatches in
            training, sorted in evaluation) so dynamic padding pads little.
    """

    def __init__(
        self,
        *,
        name: str,
        root: str,
        path: str,
        text_column: str,
        label_column: str,
        tokenizer: str,
        max_length: int,
        seed: int = 42,
        hub_id: str | None = None,
        val_size: float = 0.1,
        test_size: float = 0.1,
        max_train_samples: int | None = None,
        batch_size: int = 32,
        eval_batch_size: int = 128,
        num_workers: int = 0,
        group_by_length: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.labels: list[str] = []
        self.splits: DatasetDict | None = None
        self._tokenizer: Any = None

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer, loaded once."""
        if self._tokenizer is None:
            self._tokenizer = common.load_tokenizer(self.hparams.tokenizer)
        return self._tokenizer

    def load_raw(self) -> tuple[DatasetDict, list[str] | None]:
        """The raw splits, and the label names when the source defines their order."""
        hp = self.hparams
        return common.load_source(hp.path, hp.root, hp.hub_id), None

    def _make_splits(self, data: DatasetDict) -> DatasetDict:
        hp = self.hparams
        data = common.add_eval_splits(data, hp.val_size, hp.test_size, hp.seed, "labels")
        train = data["train"]
        if hp.max_train_samples and hp.max_train_samples < len(train):
            train = train.shuffle(seed=hp.seed).select(range(hp.max_train_samples))
        data["train"] = train
        return DatasetDict({s: data[s] for s in ("train", "validation", "test")})

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        hp = self.hparams
        raw, names = self.load_raw()
        raw = DatasetDict({s: d for s, d in raw.items() if s in common.SPLIT_ALIASES})
        common.check_columns(
            raw, [hp.text_column, hp.label_column], ["text_column", "label_column"]
        )
        raw = DatasetDict(
            {s: d.select_columns([hp.text_column, hp.label_column]) for s, d in raw.items()}
        )
        common.check_not_empty(raw)
        self.labels = names or label_names(raw, hp.label_column)
        data = self._make_splits(encode_labels(raw, hp.label_column, self.labels))
        common.check_not_empty(data)
        self.splits = data.map(
            lambda batch: self.tokenizer(
                batch[hp.text_column], truncation=True, max_length=hp.max_length
            ),
            batched=True,
            remove_columns=[hp.text_column],
            desc="tokenising",
        )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        from transformers import DataCollatorWithPadding

        assert self.splits is not None, "call setup() first"
        size = self.hparams.batch_size if split == "train" else self.hparams.eval_batch_size
        sampler = None
        if self.hparams.group_by_length:
            sampler = common.length_grouped_sampler(self.splits[split], size, shuffle)
        return DataLoader(
            self.splits[split],
            batch_size=size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            collate_fn=DataCollatorWithPadding(self.tokenizer),
            num_workers=self.hparams.num_workers,
        )

    @override
    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    @override
    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", shuffle=False)

    @override
    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
