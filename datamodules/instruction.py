"""Instruction tuning data: (instruction, optional input, response) -> masked decoder samples."""

from __future__ import annotations

from functools import partial
from typing import Any

import lightning as L
from torch.utils.data import DataLoader
from typing_extensions import override

from datamodules import common, prompting
from tunelab.errors import DataError

Record = dict[str, str]


class InstructionDataModule(L.LightningDataModule):
    """Any CSV/JSON/JSONL/Parquet file(s) or hub id with instruction / input / response fields.

    Examples are rendered by `datamodules.prompting` (chat template or plain template), labels
    are -100 on prompt and padding tokens, and training rows are optionally packed. Validation
    and test come from the source's splits when it has them, else they are carved from train.
    Subclasses (MedQuAD, PubMedQA) override `load_records` only.

    Args:
        name: the dataset's config name (for tags).
        root: the data root (`TUNELAB_DATA_DIR`), searched for relative `path`s.
        path: a file, a folder of `train.*`/`validation.*`/`test.*` files, or a hub id.
        tokenizer: tokenizer folder or hub id (the model's `name_or_path`).
        max_length: tokens per sample (prompt + response; the response is truncated).
        seed: seed of carved splits and subsampling.
        hub_id: hub dataset to use when `path` is not found locally.
        instruction_field: column holding the instruction (question).
        input_field: optional column holding extra input (context); null for none.
        response_field: column holding the target response.
        template: `auto` (chat template if the tokenizer has one), `chat` or `plain`.
        system_prompt: optional system message (chat template only).
        packing: pack several training examples per row (attention and loss stay per example).
        skip_long_prompts: drop examples whose prompt exceeds `max_length` instead of failing.
        val_size: validation fraction (< 1) or row count carved from train.
        test_size: test fraction or row count carved from train when there is no test split.
        max_train_samples: keep at most this many (shuffled) training examples.
        batch_size: training batch size.
        eval_batch_size: validation/test batch size.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        *,
        name: str,
        root: str,
        path: str,
        tokenizer: str,
        max_length: int,
        seed: int = 42,
        hub_id: str | None = None,
        instruction_field: str = "instruction",
        input_field: str | None = None,
        response_field: str = "response",
        template: str = "auto",
        system_prompt: str | None = None,
        packing: bool = False,
        skip_long_prompts: bool = False,
        val_size: float = 0.1,
        test_size: float = 0.1,
        max_train_samples: int | None = None,
        batch_size: int = 8,
        eval_batch_size: int = 16,
        num_workers: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.labels: list[str] = []
        self.records: dict[str, list[Record]] = {}
        self.splits: dict[str, list[dict[str, list[int]]]] | None = None
        self._tokenizer: Any = None

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer, loaded once (pad token = eos when it has none)."""
        if self._tokenizer is None:
            self._tokenizer = common.load_tokenizer(self.hparams.tokenizer)
            if self._tokenizer.pad_token_id is None:
                self._tokenizer.pad_token = self._tokenizer.eos_token
        return self._tokenizer

    # ------------------------------------------------------------------ loading
    def load_records(self) -> dict[str, list[Record]]:
        """Train/validation/test records with keys `instruction`, `input`, `response`."""
        hp = self.hparams
        data = common.load_source(hp.path, hp.root, hp.hub_id)
        fields = {"instruction_field": hp.instruction_field, "response_field": hp.response_field}
        if hp.input_field:
            fields["input_field"] = hp.input_field
        common.check_columns(data, list(fields.values()), list(fields))
        common.check_not_empty(data)
        data = common.add_eval_splits(data, hp.val_size, hp.test_size, hp.seed, None)
        return {split: [self._record(row) for row in ds] for split, ds in data.items()}

    def _record(self, row: dict[str, Any]) -> Record:
        hp = self.hparams
        return {
            "instruction": row[hp.instruction_field],
            "input": row[hp.input_field] if hp.input_field else "",
            "response": row[hp.response_field],
        }

    # ------------------------------------------------------------------ encoding
    def encode_split(self, split: str, records: list[Record]) -> list[dict[str, list[int]]]:
        """Check and encode one split's records; errors name the row and the fix."""
        hp = self.hparams
        chat = prompting.uses_chat_template(self.tokenizer, hp.template)
        encoded = []
        for row, record in enumerate(records):
            for key in ("instruction", "response"):
                if not isinstance(record[key], str) or not record[key].strip():
                    field = hp.response_field if key == "response" else hp.instruction_field
                    raise DataError(
                        f"empty {key} in row {row} of the {split} split (data.{key}_field="
                        f"{field}); every example needs a non-empty {key}. Fix the data or "
                        "point the field at another column"
                    )
            try:
                encoded.append(
                    prompting.encode_example(
                        self.tokenizer, record, hp.max_length, chat, hp.system_prompt
                    )
                )
            except DataError as err:
                if hp.skip_long_prompts and "longer than" in str(err):
                    continue
                raise DataError(
                    f"row {row} of the {split} split: {err}. Fix: raise model.max_length, "
                    "shorten the input, or data.skip_long_prompts=true"
                ) from err
        if not encoded:
            raise DataError(f"the {split} split has no example left after encoding")
        return encoded

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        hp = self.hparams
        records = self.load_records()
        if hp.max_train_samples and hp.max_train_samples < len(records["train"]):
            records["train"] = records["train"][: hp.max_train_samples]
        for split, rows in records.items():
            if not rows:
                raise DataError(f"the {split} split is empty; lower data.val_size/test_size")
        self.records = records
        self.splits = {s: self.encode_split(s, r) for s, r in records.items()}
        if hp.packing:
            self.splits["train"] = prompting.pack(self.splits["train"], hp.max_length)

    def generation_prompts(self, n: int) -> list[dict[str, Any]]:
        """The first `n` validation examples as prompts (token ids, prompt text, reference)."""
        chat = prompting.uses_chat_template(self.tokenizer, self.hparams.template)
        prompts = []
        for record in self.records["validation"][:n]:
            text, _ = prompting.prompt_and_response_text(
                self.tokenizer, record, chat, self.hparams.system_prompt
            )
            ids = prompting.encode_prompt(self.tokenizer, text, chat)
            prompts.append({"prompt": text, "input_ids": ids, "reference": record["response"]})
        return prompts

    # ------------------------------------------------------------------ loaders
    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        assert self.splits is not None, "call setup() first"
        size = self.hparams.batch_size if split == "train" else self.hparams.eval_batch_size
        pad_id = self.tokenizer.pad_token_id
        return DataLoader(
            self.splits[split],
            batch_size=size,
            shuffle=shuffle,
            collate_fn=partial(prompting.collate, pad_id=pad_id),
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
