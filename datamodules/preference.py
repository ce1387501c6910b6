"""The preference family's LightningDataModule: any `PreferenceData` loader.

Each pair is encoded twice with the instruction-tuning prompt (`tunelab.base.prompting`):
prompt + chosen and prompt + rejected, labels -100 on the prompt. A batch stacks the chosen rows
over the rejected ones ([chosen; rejected]) so that the policy sees both in one forward pass.
Unpaired (KTO) batches stack the completions over mismatched ones (each prompt with the previous
row's completion, fixed when the split is encoded), which estimate KTO's KL term, and carry
`desirable`.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from datasets import Dataset, DatasetDict
from torch.utils.data import DataLoader

from datamodules import audit_view, prepared
from datamodules.batching import grouped
from datamodules.instruction import InstructionDataModule, Record, where
from datamodules.resumable import shuffled, training_loader
from tunelab.base import prompting
from tunelab.base.audit import hook as audit_hook
from tunelab.base.errors import DataError

PAIRED = ("instruction", "chosen", "rejected")
UNPAIRED = ("instruction", "completion")


def unpair(record: Record) -> list[Record]:
    """A pair as two labelled completions: chosen desirable, rejected not (KTO on pairs)."""
    base = {k: v for k, v in record.items() if k not in ("chosen", "rejected")}
    return [
        base | {"completion": record["chosen"], "label": True},
        base | {"completion": record["rejected"], "label": False},
    ]


def collate_pairs(features: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """[chosen; rejected] rows, right-padded to one width (`prompting.collate`)."""
    chosen = [{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features]
    rejected = [{"input_ids": f["rejected_ids"], "labels": f["rejected_labels"]} for f in features]
    return with_reference(prompting.collate(chosen + rejected, pad_id), features)


def with_reference(batch: dict[str, Any], features: list[dict[str, Any]]) -> dict[str, Any]:
    """Add the precomputed reference log-probabilities (callbacks.reference_logps), if any.

    `ref_chosen` scores each row's first-half sequence (chosen, or KTO's completion) and
    `ref_rejected` its second-half one (rejected, or KTO's mismatched completion).
    """
    if "ref_chosen" in features[0]:
        import torch

        scores = [f["ref_chosen"] for f in features] + [f["ref_rejected"] for f in features]
        batch["reference_logps"] = torch.tensor(scores, dtype=torch.float32)
    return batch


def prompt_length(labels: list[int]) -> int:
    """How many leading tokens are prompt (label -100)."""
    return next(i for i, t in enumerate(labels) if t != prompting.IGNORE)


def mismatch(rows: list[dict[str, Any]], max_length: int) -> list[dict[str, Any]]:
    """KTO's KL rows, fixed once per split: each prompt with the previous row's completion.

    Fixed when the split is encoded (as TRL builds its KL dataset), not drawn per batch, so that
    the reference log-probabilities of these rows can be precomputed like the others'.
    """
    for i, row in enumerate(rows):
        prompt = prompt_length(row["labels"])
        other = rows[i - 1]
        completion = other["input_ids"][prompt_length(other["labels"]) :]
        completion = completion[: max(max_length - prompt, 1)]
        row["kl_ids"] = row["input_ids"][:prompt] + completion
        row["kl_labels"] = [prompting.IGNORE] * prompt + completion
    return rows


def collate_unpaired(features: list[dict[str, Any]], pad_id: int) -> dict:
    """[completions; their mismatched completions (`mismatch`)], and `desirable`."""
    import torch

    rows = [{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features]
    rows += [{"input_ids": f["kl_ids"], "labels": f["kl_labels"]} for f in features]
    batch = with_reference(prompting.collate(rows, pad_id), features)
    batch["desirable"] = torch.tensor([bool(f["desirable"]) for f in features])
    return batch


class PreferenceDataModule(InstructionDataModule):
    """A loader's preference records -> masked [chosen; rejected] (or KTO) batches.

    Args: as `InstructionDataModule` (data, tokenizer, max_length, seed).
    """

    def _check_record(self, split: str, record: Record) -> None:
        """Prompt and responses non-empty, chosen unlike rejected; the error names the row."""
        keys = UNPAIRED if "completion" in record else PAIRED
        for key in keys:
            if not isinstance(record.get(key), str) or not record[key].strip():
                what = "prompt" if key == "instruction" else key
                raise DataError(
                    f"empty {what} in {where(record)} (the {split} split) of data "
                    f"'{self.data.name}'; every example needs a non-empty {what}. Fix the data, "
                    "or the field that names its column"
                )
        if "completion" not in record and record["chosen"].strip() == record["rejected"].strip():
            raise DataError(
                f"chosen equals rejected in {where(record)} (the {split} split) of data "
                f"'{self.data.name}': the pair prefers nothing. Fix or drop the row"
            )

    def _encode(self, record: Record, response: str, chat: bool) -> dict[str, list[int]]:
        example = {"instruction": record["instruction"], "input": record.get("input") or ""}
        return prompting.encode_example(
            self.tokenizer, example | {"response": response}, self.max_length, chat,
            self.data.system_prompt,
        )  # fmt: skip

    def _encode_record(self, record: Record, chat: bool) -> dict[str, Any]:
        if "completion" in record:
            row = self._encode(record, record["completion"], chat)
            return row | {"desirable": bool(record["label"])}
        chosen = self._encode(record, record["chosen"], chat)
        rejected = self._encode(record, record["rejected"], chat)
        return chosen | {
            "rejected_ids": rejected["input_ids"],
            "rejected_labels": rejected["labels"],
        }

    def encode_split(self, split: str, records: list[Record]) -> list[dict[str, Any]]:
        """Check and encode one split's records; errors name the source row and the fix."""
        chat = prompting.uses_chat_template(self.tokenizer, self.data.template)
        if self.data.unpaired:
            records = [r for rec in records for r in (unpair(rec) if "chosen" in rec else [rec])]
        elif records and "completion" in records[0]:
            raise DataError(
                f"data '{self.data.name}' is unpaired (completion + label): set "
                "data.unpaired=true and task.loss=kto, or give chosen and rejected columns"
            )
        encoded = []
        for record in records:
            self._check_record(split, record)
            try:
                encoded.append(self._encode_record(record, chat))
            except DataError as err:
                raise DataError(
                    f"{where(record)} (the {split} split): {err}. Fix: raise model.max_length "
                    "or shorten the prompt"
                ) from err
        return mismatch(encoded, self.max_length) if self.data.unpaired else encoded

    def view_for_audit(self) -> Any:
        """What would train (before any `data.drop_*`), as rows for `python audit.py`."""
        return audit_view.preference_view(self, self._load())

    def _prepare(self) -> prepared.Prepared:
        """Load, audit and clean (`data.audit`, `data.drop_*`), check and encode the records."""
        records = self._load()
        view = audit_view.preference_view(self, records, audit_hook.needs_audit(self.data))
        keep, record = audit_view.cleaned(view, self.data)
        records["train"] = [records["train"][i] for i in keep]
        rows = {s: self.encode_split(s, r) for s, r in records.items()}
        splits = DatasetDict({s: Dataset.from_list(r) for s, r in rows.items()})
        return splits, {"records": records, "audit": record}

    def ordered_loader(self, split: str) -> DataLoader:
        """A split's batches in row order (for scoring every row once)."""
        return self._loader(split, shuffle=False)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        assert self.splits is not None, "call setup() first"
        size = self.data.batch_size if split == "train" else self.data.eval_batch_size
        pad = self.tokenizer.pad_token_id
        collate = partial(collate_unpaired if self.data.unpaired else collate_pairs, pad_id=pad)
        kwargs = {"batch_size": size, "collate_fn": collate, "num_workers": self.data.num_workers}
        rows = self.splits[split]
        if shuffle:  # an order a resumed run replays (see datamodules.resumable)
            order = grouped(rows, size) if self.data.group_by_length else shuffled(len(rows))
            return training_loader(self, rows, order, **kwargs)
        return DataLoader(rows, **kwargs)
