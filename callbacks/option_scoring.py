"""A decoder as a classifier: pick the answer option with the highest log-likelihood.

For a closed answer set (PubMedQA's yes / no / maybe, or any class names), each option is
written as the response after the test prompt, encoded exactly as in training
(`tunelab.base.prompting.encode_example`, so the chat template's end-of-turn or the plain
template's eos is part of the option), and scored by the summed log-probability of its response
tokens. Nothing is generated. On PubMedQA the model sees question and abstract, never the long
answer, and writes no reasoning before deciding: the standard *reasoning-required* setting of
Jin et al. (2019), the one its published numbers (BioBERT 68.1%, a human 78.0%) are for (their
*reasoning-free* setting also gives the long answer, which this never does).

The callback logs `test/decision_acc` (and `test/decision_majority_acc`, the accuracy of always
answering the most frequent gold option of the scored rows) and writes `report/option_scores.csv`.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import torch
from typing_extensions import override

from callbacks.generation_eval import log_report_files, single_model, test_rows
from callbacks.limits import stoppable
from tunelab.base import prompting
from tunelab.base.errors import DataError


def sequence_logprobs(model: Any, rows: list[dict[str, list[int]]], pad_id: int) -> torch.Tensor:
    """Summed log-probability of each row's labelled tokens (labels != -100), one forward pass.

    Args:
        model: a causal LM whose output has `.logits` of shape (batch, length, vocab).
        rows: `input_ids` and `labels` (as `encode_example` makes them) per row.
        pad_id: padding token id (right padding, masked out).
    """
    width = max(len(row["input_ids"]) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), prompting.IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = (
            torch.tensor(row["input_ids"]),
            torch.tensor(row["labels"]),
            1,
        )
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
    logprobs = logits[:, :-1].float().log_softmax(dim=-1).cpu()
    targets = labels[:, 1:]
    keep = targets != prompting.IGNORE
    picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * keep).sum(dim=-1)


def option_rows(tokenizer: Any, record: dict, texts: list[str], data: Any, max_length: int) -> list:
    """`record`'s prompt followed by each option text as the response, encoded as in training."""
    chat = prompting.uses_chat_template(tokenizer, data.template)
    return [
        prompting.encode_example(
            tokenizer, record | {"response": text}, max_length, chat, data.system_prompt
        )
        for text in texts
    ]


def score_options(model: Any, rows: list[dict], pad_id: int, chunk: int = 16) -> torch.Tensor:
    """Log-likelihood of every option row, `chunk` rows per forward pass."""
    starts = range(0, len(rows), chunk)
    return torch.cat([sequence_logprobs(model, rows[i : i + chunk], pad_id) for i in starts])


def gold_option(record: dict) -> str:
    """The record's gold option: its `answer` field, else its response."""
    return str(record["answer"] if "answer" in record else record["response"]).strip()


class OptionScoring(L.Callback):
    """At the end of the test epoch, score the test records' answer options (if the data has any).

    Only records in the batches the test stage read count (`trainer.limit_test_batches`).

    Args:
        max_examples: test records scored (the first ones).
        chunk: option rows per forward pass.
    """

    def __init__(self, max_examples: int = 500, chunk: int = 16):
        self.max_examples = max_examples
        self.chunk = chunk

    def evaluate(
        self,
        module: L.LightningModule,
        datamodule: Any,
        options: list[str],
        most: int | None = None,
    ) -> list:
        """One row per scored record (the first `most`, default `max_examples`).

        Each row: where, gold, predicted and each option's log-likelihood.
        """
        data, tokenizer = datamodule.data, datamodule.tokenizer
        texts = [data.answer_text(option) for option in options]
        results = []
        module.eval()
        for record in stoppable(datamodule.records["test"][: most or self.max_examples]):
            try:
                rows = option_rows(tokenizer, record, texts, data, datamodule.max_length)
            except DataError:  # the prompt alone fills max_length: not scorable
                continue
            scores = score_options(module.model, rows, tokenizer.pad_token_id, self.chunk)
            predicted = options[int(scores.argmax())]
            results.append(
                {"row": record.get("row", ""), "gold": gold_option(record), "predicted": predicted}
                | {f"logprob_{o}": round(float(s), 4) for o, s in zip(options, scores, strict=True)}
            )
        return results

    @override
    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        data = getattr(datamodule, "data", None)
        options = data.answer_options() if hasattr(data, "answer_options") else None
        if not options or not single_model(trainer, "OptionScoring"):
            return
        most = test_rows(trainer, datamodule, self.max_examples)
        results = self.evaluate(pl_module, datamodule, options, most) if most else []
        if not results:
            return
        golds = [r["gold"] for r in results]
        accuracy = sum(r["gold"] == r["predicted"] for r in results) / len(results)
        majority = Counter(golds).most_common(1)[0][1] / len(golds)
        pl_module.log("test/decision_acc", accuracy, rank_zero_only=True)
        pl_module.log("test/decision_majority_acc", majority, rank_zero_only=True)
        path = Path(trainer.default_root_dir) / "report" / "option_scores.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(results[0]))
            writer.writeheader()
            writer.writerows(results)
        log_report_files(trainer.logger, [path])
