"""Causal language modelling: a decoder learns the responses of instruction data.

The loss is on response tokens (the prompt masked out by the instruction datamodule), measured
by perplexity; the exported model takes `instruction` (and optional `input`) and generates.
"""

from __future__ import annotations

from typing import Any, ClassVar

from tunelab.base.plugin import Labels, TaskConfig

DECODING = {"max_new_tokens": 64, "do_sample": False, "temperature": 1.0}


class CausalLM(TaskConfig):
    """Instruction in, generated response out."""

    auto_model: ClassVar[str] = "transformers.AutoModelForCausalLM"
    peft_task_type: ClassVar[str] = "CAUSAL_LM"
    data_family: ClassVar[str] = "instruction"
    next_token: ClassVar[bool] = True
    input_columns: ClassVar[tuple[str, ...]] = ("instruction",)
    optional_columns: ClassVar[tuple[str, ...]] = ("input",)
    output_columns: ClassVar[tuple[str, ...]] = ("generation",)

    def metrics(self, labels: Labels | None) -> dict[str, Any]:
        """Perplexity of the response tokens."""
        from torchmetrics.text import Perplexity

        return {"ppl": Perplexity(ignore_index=-100)}

    def metric_inputs(self, outputs: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        """Logits at t against the labels at t + 1."""
        return outputs.logits[:, :-1].float(), batch["labels"][:, 1:]

    def prepare_tokenizer(self, tokenizer: Any) -> Any:
        """Pad on the left, so every generation starts right after its prompt."""
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def predict(self, predictor: Any, rows: list[dict[str, Any]], options: dict) -> list[dict]:
        """Greedy (or sampled, `do_sample`) generations after the training-time prompt."""
        import torch

        from tunelab.base.prompting import inference_prompt

        decoding = DECODING | {k: v for k, v in options.items() if v is not None}
        tokenizer = predictor.tokenizer
        prompts = [inference_prompt(tokenizer, row, predictor.info) for row in rows]
        batch = tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
        settings: dict[str, Any] = {"max_new_tokens": int(decoding["max_new_tokens"])}
        settings["do_sample"] = bool(decoding["do_sample"])
        if settings["do_sample"]:
            settings["temperature"] = float(decoding["temperature"])
        with torch.no_grad():
            out = predictor.model.generate(**batch, pad_token_id=tokenizer.pad_token_id, **settings)
        new = out[:, batch["input_ids"].shape[1] :]
        texts = tokenizer.batch_decode(new, skip_special_tokens=True)
        return [{"generation": text} for text in texts]

    def signature(self) -> Any:
        """`instruction` (+ optional `input`) in, `generation` out; decoding as params."""
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

        inputs = Schema(
            [ColSpec("string", "instruction"), ColSpec("string", "input", required=False)]
        )
        params = ParamSchema(
            [
                ParamSpec("max_new_tokens", "long", DECODING["max_new_tokens"]),
                ParamSpec("do_sample", "boolean", DECODING["do_sample"]),
                ParamSpec("temperature", "double", DECODING["temperature"]),
            ]
        )
        return ModelSignature(inputs, Schema([ColSpec("string", "generation")]), params)

    def examples(self, datamodule: Any, n: int = 3) -> list[dict[str, Any]]:
        """The first test records' instruction and input."""
        records = getattr(datamodule, "records", {}).get("test", [])[:n]
        return [{"instruction": r["instruction"], "input": r.get("input") or ""} for r in records]
