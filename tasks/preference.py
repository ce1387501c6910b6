"""Preference tuning of a decoder: DPO, IPO, ORPO, SimPO and KTO on (prompt, chosen, rejected).

A batch holds [chosen; rejected] on the batch dimension (KTO: [completions; mismatched
completions]) and runs through the policy in one forward pass; the prompt is masked out of the
log-probabilities (labels -100, as in instruction tuning). The losses are in
`tasks.preference_losses`. The reference, as TRL chooses it:

- a PEFT adapter on a base: the same model with the adapter disabled (no second copy);
- `reference_adapter=<SFT run folder | MLflow run id | models:/name@alias>` (see
  `tasks.preference_reference`): the policy trains a copy of that adapter and the reference is
  the adapter itself, frozen (loaded a second time as `reference`);
- any other method (full fine-tuning, freeze): a frozen copy of the model as it starts.

The exported model generates like an instruction-tuned one (`causal_lm`'s prediction).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, PrivateAttr

from tasks.causal_lm import CausalLM
from tunelab.base.errors import ModelLoadError
from tunelab.base.plugin import Labels, MethodConfig, ModelProbe

REFERENCE = "reference"  # the name of the frozen SFT adapter beside the one that trains
MODEL_KEYS = ("input_ids", "attention_mask")


def same_model(a: str, b: str) -> bool:
    """Whether two `name_or_path` values name one model (local folders compared resolved)."""
    return a == b or Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


class Preference(CausalLM):
    """Pairs (or KTO's labelled completions) in; a decoder that prefers the chosen responses out.

    Attributes:
        loss: `dpo`, `ipo`, `orpo`, `simpo` (reference-free) or `kto` (unpaired data).
        beta: the strength of the preference (DPO's and SimPO's beta, IPO's tau, ORPO's lambda).
        gamma: SimPO's target reward margin (gamma).
        reference_adapter: an SFT run's folder (or export folder, or a glob), its MLflow run
            id, `runs:/<id>/model` or `models:/<name>@<alias>`: the policy starts as that
            adapter and the reference is that adapter, frozen.
        tracking_uri: the MLflow store a run id or `models:/` reference is looked up in.
        disable_dropout: dropout off in policy and reference (TRL's default), so that the two
            agree exactly at the start (loss ln 2, rewards 0).
        precompute_reference: score every split with the reference once, then free it.
        evaluate_before: log the starting model's test metrics as `test/before/*`
            (`callbacks.before_training`), beside the trained model's `test/*`.
    """

    data_family: ClassVar[str] = "preference"

    monitor: str = "val/rewards/accuracies"
    mode: Literal["min", "max"] = "max"
    # `task.loss=...` (named `objective` in code: `loss` is the hook that returns the loss)
    objective: Literal["dpo", "ipo", "orpo", "simpo", "kto"] = Field(default="dpo", alias="loss")
    beta: Annotated[float, Field(gt=0)] = 0.1
    gamma: Annotated[float, Field(ge=0)] = 0.5
    reference_adapter: str | None = None
    tracking_uri: str | None = None
    disable_dropout: bool = True
    precompute_reference: bool = False  # score with the reference once, then free it
    evaluate_before: bool = True  # test metrics of the starting model (test/before/*)
    _frozen: Any = PrivateAttr(default=None)  # the frozen reference copy (non-PEFT methods)
    _adapter: Any = PrivateAttr(default=None)  # the reference adapter's local folder, once found

    def check(self, run: dict[str, Any], problems: list[str]) -> None:
        """The data layout fits the loss; a reference adapter only with a loss that has one."""
        from tasks.preference_losses import REFERENCED

        unpaired = bool((run.get("data") or {}).get("unpaired"))
        if unpaired != (self.objective == "kto"):
            fix = "data.unpaired=true" if self.objective == "kto" else "task.loss=kto"
            layout = "unpaired" if self.objective == "kto" else "paired"
            problems.append(
                f"task.loss={self.objective} needs {layout} data but "
                f"data.unpaired={str(unpaired).lower()}; set {fix}"
            )
        if self.precompute_reference and self.objective not in REFERENCED:
            problems.append(
                f"task.precompute_reference: task.loss={self.objective} uses no reference; set "
                "task.precompute_reference=false (or task.loss=dpo|ipo|kto)"
            )
        if self.reference_adapter is not None and self.objective not in REFERENCED:
            problems.append(
                f"task.reference_adapter: task.loss={self.objective} uses no reference; use "
                "task.loss=dpo|ipo|kto, or start ORPO/SimPO from the base"
            )

    def check_model(self, probe: ModelProbe, problems: list[str]) -> None:
        """The reference adapter exists (downloaded if in MLflow) and was trained on this base."""
        if self.reference_adapter is None:
            return
        try:
            folder = self.adapter_path()
        except ModelLoadError as err:
            problems.append(str(err))
            return
        info = folder / "model_info.json"
        trained_on = json.loads(info.read_text()).get("base") if info.is_file() else None
        if trained_on and not same_model(trained_on, probe.name_or_path):
            problems.append(
                f"task.reference_adapter was trained on base '{trained_on}' but "
                f"model.name_or_path='{probe.name_or_path}'; set model.name_or_path={trained_on}"
            )

    def method_problem(self, method: type[MethodConfig]) -> str | None:
        """Methods that replace the loss or reshape the model after the reference is taken."""
        if method.loss is not MethodConfig.loss:
            return "it brings its own training loss (its `loss` hook), which replaces task.loss"
        if method.load_base is not MethodConfig.load_base or method.prepare is not (
            MethodConfig.prepare
        ):
            return (
                "it replaces or reshapes the model before training, so the policy would not "
                "start as its reference"
            )
        return None

    def adapter_path(self) -> Path:
        """The reference adapter's local folder (found, or downloaded from MLflow, once)."""
        from tasks.preference_reference import locate

        if self._adapter is None:
            self._adapter = locate(str(self.reference_adapter), self.tracking_uri)
        return self._adapter

    def adapt(self, model: Any, method: MethodConfig) -> Any:
        """The policy; the reference is the adapter disabled, the SFT adapter, or a copy."""
        import copy

        from peft import PeftModel

        if self.reference_adapter is not None:
            folder = self.adapter_path()
            policy = PeftModel.from_pretrained(model, folder, is_trainable=True)
            policy.load_adapter(folder, adapter_name=REFERENCE, is_trainable=False)
            policy.set_adapter("default")
        else:
            policy = method.adapt(model, self)
            if not isinstance(policy, PeftModel):  # weights change: keep them as they start
                self._frozen = copy.deepcopy(policy).eval().requires_grad_(False)
        if self.disable_dropout:
            for module in [policy, *([self._frozen] if self._frozen is not None else [])]:
                no_dropout(module)
        return policy

    @contextmanager
    def reference(self, model: Any):
        """The reference model to run under `torch.no_grad` (see the module docstring)."""
        if self._frozen is not None:
            yield self._frozen.to(next(model.parameters()).device)
        elif REFERENCE in getattr(model, "peft_config", {}):
            model.set_adapter(REFERENCE, inference_mode=True)
            try:
                yield model
            finally:
                model.set_adapter("default")
        else:
            with model.disable_adapter():
                yield model

    def release_reference(self, model: Any) -> None:
        """Free a reference that is no longer needed (its log-probabilities were precomputed)."""
        self._frozen = None
        if REFERENCE in getattr(model, "peft_config", {}):
            model.delete_adapter(REFERENCE)

    def forward(self, model: Any, batch: dict[str, Any]) -> Any:
        """Policy (and reference) log-probabilities of every row, then the loss's scores."""
        import torch

        from tasks import preference_losses as losses

        inputs = {k: batch[k] for k in MODEL_KEYS if k in batch}
        if self.objective in losses.REFERENCED and "reference_logps" not in batch:
            with torch.no_grad(), self.reference(model) as ref:  # first: no graph is built yet
                logits = ref(**inputs, use_cache=False).logits
                reference = losses.sequence_logps(logits, batch["labels"])
        policy = losses.sequence_logps(model(**inputs, use_cache=False).logits, batch["labels"])
        if "reference_logps" in batch:  # precomputed (callbacks.reference_logps)
            reference = losses.Logps(batch["reference_logps"].to(policy.total), policy.tokens)
        if self.objective == "orpo":
            return losses.orpo(policy, self.beta)
        if self.objective == "simpo":
            return losses.simpo(policy, self.beta, self.gamma)
        if self.objective == "kto":
            return losses.kto(policy, reference, batch["desirable"], self.beta)
        scorer = losses.dpo if self.objective == "dpo" else losses.ipo
        return scorer(policy, reference, self.beta)

    def metrics(self, labels: Labels | None) -> dict[str, Any]:
        """TRL's rewards/* and logps/* means (one metric reporting them all)."""
        from tasks.preference_losses import PreferenceStats

        return {"preference": PreferenceStats()}

    def metric_inputs(self, outputs: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        """The batch's per-example rewards and log-probabilities."""
        return outputs.stats(), None

    def step_logs(self, outputs: Any) -> dict[str, Any]:
        """The training batch's rewards and log-probabilities (`train/rewards/chosen`, ...)."""
        from tasks.preference_losses import batch_means

        return batch_means(outputs.stats())


def no_dropout(model: Any) -> None:
    """Set every dropout probability of `model` to 0 (peft's LoRA dropout included)."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
