"""Every fine-tuning method on the tiny BERT: what trains, that it learns, that it reloads.

Each method trains once through the real pipeline (`run_experiment`: fit, test the best
checkpoint, export, MLflow); the tests then check the trainable-parameter count against a count
computed here from the base model's shapes, that frozen weights are bit-identical after training,
and that the checkpoint and the export both reload to identical outputs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import INTENTS, tiny_overrides
from lightning.pytorch.callbacks import Callback
from mlflow import MlflowClient
from module_helpers import make_module, quantized_layers, task_config
from torch import nn

from tunelab.base.errors import ConfigError
from tunelab.base.plugin import Labels
from tunelab.config.compose import available
from tunelab.config.validate import load_config

# Every method YAML; distillation needs a teacher and is added where the tests provide one.
METHODS = [m for m in available("method") if m != "distill"]
LABELS = sorted(INTENTS)
TEXTS = ["i lost my card please", "exchange rate for euro now", "refund status today"]
TOKENS = 4  # virtual tokens of the prompt-based methods
EXTRA = {
    "freeze": ["method.trainable_layers=1"],
    "prefix": [f"method.num_virtual_tokens={TOKENS}"],
    "prompt": [f"method.num_virtual_tokens={TOKENS}"],
    "ptuning": [f"method.num_virtual_tokens={TOKENS}", "method.encoder_hidden_size=16"],
    "distill": ["method.student_layers=1"],
}
LR = {"full": 1e-3, "freeze": 1e-3, "distill": 1e-3}  # peft-style methods: 1e-2


def compose(method: str, tiny_bert: Path, intent_data: Path, *extra: str):
    args = [f"method={method}", *tiny_overrides(tiny_bert, intent_data), *EXTRA.get(method, [])]
    args += [f"optim.lr={LR.get(method, 1e-2)}", "trainer.max_epochs=1", *extra]
    return load_config(args)


class Snapshot(Callback):
    """Keep the module being trained and a copy of its weights before training."""

    def on_fit_start(self, trainer, pl_module) -> None:
        self.module = pl_module
        self.before = {n: p.detach().clone() for n, p in pl_module.model.named_parameters()}
        self.dropout_modes = {"train": set(), "validation": set()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.dropout_modes["train"] |= dropout_modes(pl_module.model)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, *_) -> None:
        self.dropout_modes["validation"] |= dropout_modes(pl_module.model)


def dropout_modes(model: nn.Module) -> set[bool]:
    """The `training` flags of the model's active dropout layers."""
    return {m.training for m in model.modules() if isinstance(m, nn.Dropout) and m.p > 0}


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_bert: Path) -> Path:
    """A 2-layer classifier with the intents' labels, saved as a full export folder."""
    from transformers import AutoModelForSequenceClassification

    folder = tmp_path_factory.mktemp("teacher")
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_bert, num_labels=4, id2label=dict(enumerate(LABELS))
    )
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert: Path, intent_data: Path, teacher: Path):
    """`trained(method)` -> (RunResult, Snapshot): one pipeline run per method, cached."""
    from tunelab.run.pipeline import run_experiment

    folder, cache = tmp_path_factory.mktemp("methods"), {}

    def train(method: str):
        if method not in cache:
            extra = [f"method.teacher={teacher}"] if method == "distill" else []
            with pytest.MonkeyPatch.context() as patch:
                patch.chdir(folder)
                patch.delenv("MLFLOW_TRACKING_URI", raising=False)
                _cfg, run = compose(method, tiny_bert, intent_data, *extra)
                snapshot = Snapshot()
                cache[method] = run_experiment(run, callbacks=[snapshot]), snapshot
        return cache[method]

    train.folder = folder
    return train


def build(method: str, tiny_bert: Path, intent_data: Path, teacher: Path):
    from tunelab.run.build import build_module

    extra = [f"method.teacher={teacher}"] if method == "distill" else []
    _, run = compose(method, tiny_bert, intent_data, *extra)
    return build_module(run, Labels(names=LABELS))


def fixed_batch(tiny_bert: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoTokenizer

    batch = dict(AutoTokenizer.from_pretrained(tiny_bert)(TEXTS, padding=True, return_tensors="pt"))
    batch.pop("token_type_ids")
    return batch | {"labels": torch.tensor([0, 1, 2])}


def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**batch).logits


# ----------------------------------------------------------------------------- expected counts
def size(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def linears(model: nn.Module, suffixes: list[str]) -> list[nn.Linear]:
    return [
        m
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and any(f".{n}".endswith(f".{s}") for s in suffixes)
    ]


def expected_trainable(method: str, base: nn.Module) -> int:
    """What each method should train, from the base model's shapes (hidden 32, 2 layers)."""
    cfg, layers = base.config, base.bert.encoder.layer
    hidden, head = cfg.hidden_size, size(base.classifier)
    if method in ("full", "prune"):  # prune: before `prepare` removes neurons (at fit start)
        return size(base)
    if method == "freeze":  # top layer + pooler + head
        return size(layers[1]) + size(base.bert.pooler) + head
    if method in ("lora", "dora"):  # r=8 on query, key, value, every dense (pooler too)
        targets = linears(base, ["query", "key", "value", "dense"])
        lora = sum(8 * (m.in_features + m.out_features) for m in targets)
        magnitude = sum(m.out_features for m in targets) if method == "dora" else 0
        return lora + magnitude + head
    if method == "ia3":  # one vector per target; feed-forward targets scale their input
        ff = linears(base, ["output.dense"])
        return (
            sum(m.in_features for m in ff)
            + sum(m.out_features for m in linears(base, ["key", "value"]))
            + head
        )
    if method == "adapter":  # 2 bottlenecks per layer (32 -> 2 -> 32) + every LayerNorm
        bottleneck = hidden // 16
        adapters = 2 * cfg.num_hidden_layers * (2 * hidden * bottleneck + bottleneck + hidden)
        norms = sum(size(m) for m in base.modules() if isinstance(m, nn.LayerNorm))
        return adapters + norms + head
    if method == "prefix":  # a key and a value vector per virtual token and layer
        return TOKENS * cfg.num_hidden_layers * 2 * hidden + head
    if method == "prompt":
        return TOKENS * hidden + head
    if method == "ptuning":  # embeddings + MLP hidden -> 16 -> 16 -> hidden
        mlp = (hidden * 16 + 16) + (16 * 16 + 16) + (16 * hidden + hidden)
        return TOKENS * hidden + mlp + head
    assert method == "distill"  # the student: one of the teacher's two layers
    return size(base) - size(layers[1])


def expected_total(method: str, base: nn.Module, trainable: int) -> int:
    """Total parameters: peft keeps the base (with its original head) beside what it adds."""
    if method in ("full", "freeze", "prune"):
        return size(base)
    if method == "distill":
        return trainable
    if method == "adapter":
        norms = sum(size(m) for m in base.modules() if isinstance(m, nn.LayerNorm))
        return size(base) + trainable - norms - size(base.classifier)
    return size(base) + trainable


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("method", [*METHODS, "distill"])
def test_trainable_parameter_count_is_what_the_method_trains(
    method, tiny_bert, intent_data, teacher
):
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=4)
    module = build(method, tiny_bert, intent_data, teacher)
    trainable, total = module.parameter_counts
    assert trainable == expected_trainable(method, base)
    assert total == expected_total(method, base, trainable)
    assert trainable == sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.mark.parametrize("method", [*METHODS, "distill"])
def test_one_optimiser_step_lowers_the_loss(method, tiny_bert, intent_data, teacher):
    torch.manual_seed(0)
    module = build(method, tiny_bert, intent_data, teacher).eval()  # eval: no dropout noise
    batch = fixed_batch(tiny_bert)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    loss = module.compute_loss(module(**batch), batch)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        after = module.compute_loss(module(**batch), batch)
    assert after < loss.detach()


@pytest.mark.parametrize("method", [*METHODS, "distill"])
def test_dropout_is_on_in_training_steps_and_off_in_validation(method, trained):
    # the base comes from `from_pretrained` in eval mode; the module must switch it to train
    _, snapshot = trained(method)
    assert snapshot.dropout_modes == {"train": {True}, "validation": {False}}


def test_config_overrides_replace_settings_of_the_models_own_config(tiny_bert, intent_data):
    from tunelab.run.build import build_module

    _, run = compose(
        "freeze", tiny_bert, intent_data, "+model.config_overrides.hidden_dropout_prob=0"
    )
    module = build_module(run, Labels(names=LABELS))
    assert module.model.config.hidden_dropout_prob == 0
    hidden = [m for n, m in module.model.named_modules() if n.endswith("output.dropout")]
    assert hidden and all(m.p == 0 for m in hidden)  # attention dropout stays at the model's 0.1
    assert module.model.config.attention_probs_dropout_prob == 0.1


def test_label_smoothing_smooths_the_training_loss_only(tiny_bert, intent_data):
    from tunelab.run.build import build_module

    _, run = compose("full", tiny_bert, intent_data, "task.label_smoothing=0.2")
    module = build_module(run, Labels(names=LABELS)).eval()
    batch = fixed_batch(tiny_bert)
    with torch.no_grad():
        plain = module(**batch)
        smoothed = module.compute_loss(module(**batch), batch)
    expected = nn.functional.cross_entropy(plain.logits, batch["labels"], label_smoothing=0.2)
    torch.testing.assert_close(smoothed, expected)
    assert not torch.isclose(smoothed, plain.loss)  # the unsmoothed loss validation logs


@pytest.mark.parametrize("method", [*METHODS, "distill"])
def test_training_leaves_frozen_weights_bit_identical(method, trained):
    result, snapshot = trained(method)
    params = dict(snapshot.module.model.named_parameters())
    frozen = [n for n, p in params.items() if not p.requires_grad]
    for name in frozen:
        assert torch.equal(params[name], snapshot.before[name]), name
    changed = [
        n for n, p in params.items() if p.requires_grad and not torch.equal(p, snapshot.before[n])
    ]
    assert set(changed) == {n for n, p in params.items() if p.requires_grad}  # all trained
    assert (method in ("full", "distill", "prune")) == (not frozen)
    client = MlflowClient(f"sqlite:///{trained.folder}/mlflow.db")
    logged = client.get_run(result.run_id).data.metrics
    now = snapshot.module.parameter_counts[0]
    assert logged["params/trainable"] == result.trainable_params
    assert result.trainable_params == now  # prune: counted again after `prepare` removed neurons


def load_export(method: str, folder: Path, tiny_bert: Path) -> nn.Module:
    """Reload an export folder the way a user would, without tunelab's module."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from modules.adapter import load_adapter_export

    if method in ("full", "freeze", "distill", "prune"):
        return AutoModelForSequenceClassification.from_pretrained(folder)
    if method == "adapter":
        return load_adapter_export(folder, task_config())
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=4)
    return PeftModel.from_pretrained(base, folder)


@pytest.mark.parametrize("method", [*METHODS, "distill"])
def test_checkpoint_and_export_reload_to_identical_outputs(method, trained, tiny_bert):
    from tunelab.run.checkpoint import load_module

    result, snapshot = trained(method)
    batch = fixed_batch(tiny_bert)
    batch.pop("labels")
    expected = logits(snapshot.module.model, batch)  # the best checkpoint, loaded for `test`
    checkpoint = trained.folder / result.best_checkpoint  # run folders are relative to the cwd
    module = load_module(checkpoint)
    torch.testing.assert_close(logits(module.model, batch), expected, rtol=0, atol=0)
    exported = load_export(method, trained.folder / result.run_dir / "export", tiny_bert)
    torch.testing.assert_close(logits(exported, batch), expected, rtol=0, atol=1e-6)
    untrained = logits(build_base(tiny_bert), batch)
    assert not torch.allclose(untrained, expected)


def build_base(tiny_bert: Path) -> nn.Module:
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(1)
    return AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=4)


def test_distill_teacher_from_an_mlflow_run_and_a_lora_checkpoint(trained, tiny_bert, intent_data):
    """`mlflow:<run_id>` downloads the run's `model` artifact; a LoRA `.ckpt` teacher is merged."""
    from tunelab.run.build import build_module

    full, _ = trained("full")
    lora, _ = trained("lora")
    uri = f"sqlite:///{trained.folder}/mlflow.db"
    for spec in (f"mlflow:{full.run_id}", trained.folder / lora.best_checkpoint):
        teacher = [f"method.teacher={spec}", f"method.tracking_uri={uri}"]
        _, run = compose("distill", tiny_bert, intent_data, *teacher)
        module = build_module(run, Labels(names=LABELS))
        assert len(module.model.bert.encoder.layer) == 1
        assert not any(p.requires_grad for p in module.method._teacher.parameters())
        assert "teacher" not in dict(module.named_children())
        assert all(not n.startswith("teacher") for n in module.state_dict())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["method=freeze", "method.trainable_layers=3"], "has only 2 layers"),
        (["method=lora", "method.target_modules=[q_proj]"], r"match no linear layer.*query"),
        (["method=adapter", "method.target_modules=[o_proj]"], "match no linear layer"),
        (["method=distill", "method.teacher=/nonexistent/export"], "nothing at"),
        (["model.max_length=4096"], "128 positions"),
        (["method=full", "model.quantize=nf4"], "cannot be quantised"),
        (["method=distill"], "method.teacher is required"),
        (["method=distill", "method.student_layers=2", "TEACHER"], "teacher has 2"),
        (
            ["method=ia3", "method.target_modules=[key]", "method.feedforward_modules=[query]"],
            "not in target_modules",
        ),
    ],
)
def test_bad_method_settings_raise_config_error(args, message, tiny_bert, intent_data, teacher):
    """Caught before any weight or row is loaded: at validation, or by the meta-device preflight."""
    from tunelab.config.preflight import preflight

    args = [f"method.teacher={teacher}" if a == "TEACHER" else a for a in args]
    with pytest.raises(ConfigError, match=message):
        _, run = load_config([*tiny_overrides(tiny_bert, intent_data), *args])
        preflight(run)


# ----------------------------------------------------------------------------- decoders
# Settings that fit the tiny decoder; every other method runs on its defaults.
DECODER_SETTINGS = {
    "freeze": {"trainable_layers": 1},
    "lora": {"r": 4, "alpha": 8},
    "dora": {"r": 4, "alpha": 8},
    "ia3": {},
    "adapter": {
        "target_modules": ["o_proj", "down_proj"],
        "reduction_factor": 8,
        "bottleneck_size": None,
        "activation": "silu",
        "train_layer_norms": False,
    },
    "prefix": {"num_virtual_tokens": TOKENS, "projection": False, "encoder_hidden_size": 16},
    "prompt": {"num_virtual_tokens": TOKENS, "init_text": None},
    "ptuning": {"num_virtual_tokens": TOKENS, "encoder_hidden_size": 16},
    "distill": {"student_layers": 1},
}


@pytest.fixture(scope="module")
def tiny_mistral(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 Mistral (random init) saved as a HF folder."""
    from transformers import MistralConfig, MistralForCausalLM

    folder = tmp_path_factory.mktemp("tiny_mistral")
    config = MistralConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    MistralForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("method", available("method"))
def test_decoder_methods_train_what_they_should_and_learn(method, tiny_mistral):
    """Causal LM: only the method's weights train, one step lowers the response-token loss."""
    params = dict(DECODER_SETTINGS.get(method, {}))
    if method == "distill":
        params["teacher"] = str(tiny_mistral)
    model_cfg = {"name_or_path": str(tiny_mistral), "task": "causal_lm", "dtype": "float32"}
    torch.manual_seed(0)
    module = make_module(method, model_cfg, **params).eval()
    ids = torch.randint(3, 128, (2, 12))
    labels = ids.clone()
    labels[:, :6] = -100  # loss on the "response" half only
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    kept_frozen = ("embed_tokens", "layers.0." if method == "freeze" else "lm_head")
    leaked = [n for n in trainable if any(k in n for k in kept_frozen)]
    assert trainable and (not module.saves_trainable_only or not leaked), leaked
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    loss = module.compute_loss(module(**batch), batch)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        assert module.compute_loss(module(**batch), batch) < loss.detach()


def test_qlora_classifier_trains_again_after_a_validation_pass(tmp_path, tiny_bert: Path):
    """bitsandbytes repacks 4-bit weights for CPU inference in eval mode; training must go on."""
    from transformers import BertConfig, BertModel

    config = BertConfig.from_pretrained(tiny_bert)
    config.update({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1})
    BertModel(config).save_pretrained(tmp_path)  # CPU 4-bit layers need >= 64 inputs
    model = {
        "name_or_path": str(tmp_path),
        "task": "sequence_classification",
        "max_length": 16,
        "quantize": "nf4",
    }
    module = make_module("lora", model, LABELS, r=16, alpha=32)
    assert quantized_layers(module.model) == 7  # q, k, v, attn out, intermediate, output, pooler
    batch = fixed_batch(tiny_bert)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # train, validate, train: the second step used to fail
        module.train()
        loss = module.compute_loss(module(**batch), batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        module.eval()
        with torch.no_grad():
            after = module.compute_loss(module(**batch), batch)
    assert after < loss.detach()
