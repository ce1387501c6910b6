"""Load an export folder and predict with it: the one code path of the MLflow pyfunc and predict.py.

An export folder is what `export/` of a run holds: a PEFT adapter (`adapter_config.json` with a
`peft_type`) over the base recorded at training time, tunelab's bottleneck adapter
(`adapter_config.json` with a `method`), or a whole Hugging Face model (full, freeze, distill).
Adapters rebuild their base from `info["base"]`, the training run's `model.name_or_path`, with its
`model.config_overrides` (`info["base_config_overrides"]`): that folder or hub id must be
reachable where the model is loaded.

`info` (written into the MLflow Model as its `model_config`) says what the export predicts:
`kind` (`classifier` or `generator`), `labels`, `max_length`, and for generators the prompt
format (`template`, `system_prompt`) used in training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.base.errors import DataError, ModelLoadError
from tunelab.tasks import TASKS

DECODING = {"max_new_tokens": 64, "do_sample": False, "temperature": 1.0}


def model_info(resolved: dict[str, Any], labels: list[str] | None) -> dict[str, Any]:
    """What a pyfunc needs to know about a run's export, from its resolved config."""
    model, data = resolved["model"], resolved["data"]
    return {
        "kind": TASKS[model["task"]].export_kind,
        "task": model["task"],
        "base": model["name_or_path"],
        "base_config_overrides": dict(model.get("config_overrides") or {}),
        "labels": list(labels or []),
        "max_length": model["max_length"],
        "template": data.get("template", "auto"),
        "system_prompt": data.get("system_prompt"),
        "method": resolved["method"]["name"],
    }


def load_model(folder: Path, info: dict[str, Any]) -> Any:
    """The trained model in eval mode, rebuilt from an export folder (see the module doc)."""
    from hydra.utils import get_class, get_method

    auto = get_class(TASKS[info["task"]].auto_model)
    adapter = folder / "adapter_config.json"
    saved = json.loads(adapter.read_text()) if adapter.exists() else {}
    try:
        if "method" in saved:  # tunelab's bottleneck adapters
            model = get_method("modules.adapter.load_adapter_export")(folder)
        elif "peft_type" in saved:
            from peft import PeftModel

            overrides = info.get("base_config_overrides", {})  # the base as it was trained
            base = auto.from_pretrained(info["base"], **overrides, **_label_kwargs(info))
            model = PeftModel.from_pretrained(base, folder)
        else:
            model = auto.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"cannot load the model exported in {folder}: {str(err).splitlines()[0]}\n"
            f"Fix: adapters rebuild their base model from '{info['base']}' (the training run's "
            "model.name_or_path); make that folder or hub id reachable here."
        ) from err
    return model.eval()


def _label_kwargs(info: dict[str, Any]) -> dict[str, Any]:
    labels = info["labels"]
    if not labels:
        return {}
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {name: i for i, name in enumerate(labels)},
    }


class Predictor:
    """A loaded export: `predict(rows)` gives one output dict per input row.

    Args:
        folder: the export folder (model weights or adapter, plus the tokenizer).
        info: `model_info` of the run that wrote it.
    """

    def __init__(self, folder: str | Path, info: dict[str, Any]):
        from transformers import AutoTokenizer

        self.folder, self.info = Path(folder), info
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        self.model = load_model(self.folder, info)
        if info["kind"] == "generator":
            self.tokenizer.padding_side = "left"
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token

    @property
    def input_columns(self) -> list[str]:
        """The columns a row must have (`input` is optional for generators)."""
        return ["text"] if self.info["kind"] == "classifier" else ["instruction"]

    def predict(self, rows: list[dict[str, Any]], **decoding: Any) -> list[dict[str, Any]]:
        """Labels and probabilities (classifier) or generations (generator) for `rows`."""
        missing = [c for c in self.input_columns if rows and c not in rows[0]]
        if missing:
            raise DataError(
                f"the input has no '{missing[0]}' column (columns: {sorted(rows[0])}); a "
                f"{self.info['kind']} reads {self.input_columns}"
            )
        if self.info["kind"] == "classifier":
            return self._classify([str(r["text"]) for r in rows])
        return self._generate(rows, DECODING | {k: v for k, v in decoding.items() if v is not None})

    def _classify(self, texts: list[str]) -> list[dict[str, Any]]:
        import torch

        batch = self.tokenizer(
            texts,
            truncation=True,
            max_length=self.info["max_length"],
            padding=True,
            return_tensors="pt",
        )
        with torch.no_grad():
            probs = torch.softmax(self.model(**batch).logits.float(), dim=-1)
        best, index = probs.max(dim=-1)
        labels = self.info["labels"]
        return [
            {"label": labels[i] if labels else str(i), "probability": float(p)}
            for p, i in zip(best.tolist(), index.tolist(), strict=True)
        ]

    def prompt(self, row: dict[str, Any]) -> str:
        """The training-time prompt for one row (instruction, optional input)."""
        from hydra.utils import get_method

        prompting = "tunelab.base.prompting"
        chat = get_method(f"{prompting}.uses_chat_template")(self.tokenizer, self.info["template"])
        example = {"instruction": str(row["instruction"]), "input": str(row.get("input") or "")}
        render = get_method(f"{prompting}.prompt_and_response_text")
        system = self.info["system_prompt"]
        text, _ = render(self.tokenizer, example | {"response": ""}, chat, system)
        bos = self.tokenizer.bos_token
        return text if chat or bos is None else bos + text

    def _generate(self, rows: list[dict[str, Any]], decoding: dict[str, Any]) -> list[dict]:
        import torch

        prompts = [self.prompt(row) for row in rows]
        batch = self.tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
        options = {"max_new_tokens": int(decoding["max_new_tokens"])}
        if decoding["do_sample"]:
            options |= {"do_sample": True, "temperature": float(decoding["temperature"])}
        else:
            options |= {"do_sample": False}
        with torch.no_grad():
            out = self.model.generate(**batch, pad_token_id=self.tokenizer.pad_token_id, **options)
        new = out[:, batch["input_ids"].shape[1] :]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [{"generation": text} for text in texts]
