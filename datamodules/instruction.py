"""The instruction-tuning family's LightningDataModule: any `InstructionData` loader."""

from __future__ import annotations

from functools import partial
from typing import Any

import lightning as L
from datasets import Dataset, DatasetDict
from torch.utils.data import DataLoader
from typing_extensions import override

from datamodules import audit_view, common, prepared
from datamodules.batching import grouped
from datamodules.resumable import shuffled, training_loader
from tunelab.base import prompting
from tunelab.base.audit import hook as audit_hook
from tunelab.base.errors import DataError
from tunelab.base.plugin import DataConfig

Record = dict[str, Any]  # one example: instruction, input, response, row (`InstructionData`)

SPLITS = ("train", "validation", "test")


def where(record: Record) -> str:
    """The example's place in the source, for messages: `source row 5`, `PMID 123`, ..."""
    row = record.get("row")
    return f"source row {row}" if isinstance(row, int) else str(row)


class InstructionDataModule(L.LightningDataModule):
    """A loader's (instruction, input, response) records -> masked decoder samples.

    Examples are rendered by `tunelab.base.prompting` (chat template or plain template), labels
    are -100 on prompt and padding tokens, and training rows are optionally packed. The loader
    (`data.load`) decides the splits; this module checks, subsamples, encodes and batches them.

    Args:
        data: the validated dataset config (an `InstructionData` subclass with `load`).
        tokenizer: tokenizer folder or hub id (the model's `name_or_path`).
        max_length: tokens per sample (prompt + response; the response is truncated).
        seed: seed of the loader's carved splits.

    Attributes:
        labels: always empty (decoders have no class list).
        out_of_scope: always None.
        records: the loader's records per split (after `setup`).
        splits: the encoded (and, for train, optionally packed) samples (after `setup`; prepared
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
        self.out_of_scope: str | None = None
        self.records: dict[str, list[Record]] = {}
        self.splits: DatasetDict | None = None
        self.audit: dict[str, Any] | None = None  # leak count, audit, removed rows (setup)
        self._tokenizer: Any = None

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer, loaded once (pad token = eos when it has none)."""
        if self._tokenizer is None:
            self._tokenizer = common.load_tokenizer(self.tokenizer_name)
            if self._tokenizer.pad_token_id is None:
                self._tokenizer.pad_token = self._tokenizer.eos_token
        return self._tokenizer

    # ------------------------------------------------------------------ encoding
    def _check_record(self, split: str, record: Record) -> None:
        """A record must have a non-empty instruction and response; the error names the row."""
        for key in ("instruction", "response"):
            if not isinstance(record.get(key), str) or not record[key].strip():
                raise DataError(
                    f"empty {key} in {where(record)} (the {split} split) of data "
                    f"'{self.data.name}'; every example needs a non-empty {key}. Fix the data, "
                    "or the field that names its column"
                )

    def encode_split(self, split: str, records: list[Record]) -> list[dict[str, list[int]]]:
        """Check and encode one split's records; errors name the source row and the fix."""
        chat = prompting.uses_chat_template(self.tokenizer, self.data.template)
        encoded = []
        for record in records:
            self._check_record(split, record)
            try:
                encoded.append(
                    prompting.encode_example(
                        self.tokenizer, record, self.max_length, chat, self.data.system_prompt
                    )
                )
            except DataError as err:
                if self.data.skip_long_prompts and "longer than" in str(err):
                    continue
                raise DataError(
                    f"{where(record)} (the {split} split): {err}. Fix: raise model.max_length, "
                    "shorten the input, or data.skip_long_prompts=true"
                ) from err
        if not encoded:
            raise DataError(f"the {split} split has no example left after encoding")
        return encoded

    def _load(self) -> dict[str, list[Record]]:
        """The loader's records, checked, train cut to `max_train_samples`."""
        records = self.data.load(self.seed)
        missing = [s for s in SPLITS if s not in records]
        if missing:
            raise DataError(
                f"{type(self.data).__name__}.load returned no {', '.join(missing)} split; "
                f"an instruction loader returns {list(SPLITS)}"
            )
        records = {s: list(records[s]) for s in SPLITS}
        n = self.data.max_train_samples
        if n and n < len(records["train"]):
            records["train"] = records["train"][:n]
        for split, rows in records.items():
            if not rows:
                raise DataError(f"the {split} split is empty; lower data.val_size/test_size")
        return records

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.splits is None:
            parts = prepared.key_parts(self)  # the first process builds, the others load
            root = prepared.cache_root()
            self.splits, extras = prepared.prepare_once(parts, self._prepare, root)
            self.records, self.audit = extras["records"], extras["audit"]
            audit_hook.announce(self.audit, self.data)
        audit_hook.log_to_run(self)  # once a trainer is attached: the run's MLflow run

    def view_for_audit(self) -> Any:
        """What would train (before any `data.drop_*`), as rows for `python audit.py`."""
        return audit_view.instruction_view(self, self._load())

    def _prepare(self) -> prepared.Prepared:
        """Load, audit and clean (`data.audit`, `data.drop_*`), encode (train packed if asked)."""
        records = self._load()
        view = audit_view.instruction_view(self, records, audit_hook.needs_audit(self.data))
        keep, record = audit_view.cleaned(view, self.data)
        records["train"] = [records["train"][i] for i in keep]
        rows = {s: self.encode_split(s, r) for s, r in records.items()}
        if self.data.packing:
            rows["train"] = prompting.pack(rows["train"], self.max_length)
        splits = DatasetDict({s: Dataset.from_list(r) for s, r in rows.items()})
        return splits, {"records": records, "audit": record}

    def generation_prompts(self, n: int, split: str = "validation") -> list[dict[str, Any]]:
        """The first `n` examples of `split` as prompts (token ids, prompt text, reference)."""
        chat = prompting.uses_chat_template(self.tokenizer, self.data.template)
        prompts = []
        for record in self.records[split][:n]:
            text, _ = prompting.prompt_and_response_text(
                self.tokenizer, record, chat, self.data.system_prompt
            )
            ids = prompting.encode_prompt(self.tokenizer, text, chat)
            prompts.append({"prompt": text, "input_ids": ids, "reference": record["response"]})
        return prompts

    # ------------------------------------------------------------------ loaders
    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        assert self.splits is not None, "call setup() first"
        size = self.data.batch_size if split == "train" else self.data.eval_batch_size
        kwargs = {
            "batch_size": size,
            "collate_fn": partial(prompting.collate, pad_id=self.tokenizer.pad_token_id),
            "num_workers": self.data.num_workers,
        }
        rows = self.splits[split]
        if shuffle:  # an order a resumed run replays (see datamodules.resumable)
            grouping = self.data.group_by_length and not self.data.packing
            order = grouped(rows, size) if grouping else shuffled(len(rows))
            return training_loader(self, rows, order, **kwargs)
        return DataLoader(rows, **kwargs)

    @override
    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    @override
    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", shuffle=False)

    @override
    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
