"""Speed switches: `trainer.precision=auto`, `optim.implementation`, `trainer.compile`."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_bert, tiny_overrides

from tunelab.config.validate import load_config
from tunelab.run import speed
from tunelab.run.module import adamw_kernel
from tunelab.run.pipeline import run_experiment


@pytest.mark.parametrize(
    ("gain", "expected"),
    [
        (1.0, "32-true"),  # bf16 GEMM no faster: bf16-mixed steps were measured at 0.5x
        (2.2, "bf16-mixed"),  # AMD EPYC avx512_bf16: steps 1.3x (MiniLM) to 1.6x (decoder)
    ],
)
def test_auto_precision_on_cpu_follows_the_measured_bf16_gain(monkeypatch, gain, expected):
    monkeypatch.setattr(speed, "cpu_bf16_gain", lambda: gain)
    assert speed.resolve_precision("auto", "cpu") == expected


def test_the_bf16_probe_measures_this_cpu():
    gain = speed.cpu_bf16_gain()
    # a ratio of two real timings: positive and finite, whatever this CPU and its load are
    assert math.isfinite(gain) and gain > 0


def test_explicit_precision_is_kept():
    assert speed.resolve_precision("bf16-true", "cpu") == "bf16-true"


def test_bad_switch_values_are_config_errors():
    from tunelab.base.errors import ConfigError

    with pytest.raises(ConfigError) as error:
        load_config(["optim.implementation=fast", "trainer.precision=bf17", "trainer.compile=2"])
    text = str(error.value)
    assert "optim.implementation" in text and "trainer.precision" in text
    assert "trainer.compile" in text


def train(tiny_bert: Path, intent_data: Path, *extra: str):
    """One short run on the tiny BERT (same seed, data order, dropout masks); (losses, module)."""
    from lightning.pytorch.callbacks import Callback

    losses, seen = [], {}

    class Record(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            losses.append(float(outputs["loss"]))
            seen["module"] = pl_module

    args = [*tiny_overrides(tiny_bert, intent_data), "optim.lr=1e-2", "trainer.max_epochs=1"]
    _cfg, run = load_config([*args, "export.save_model=false", "logger.log_model=false", *extra])
    run_experiment(run, callbacks=[Record()])
    return torch.tensor(losses), seen["module"]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, tiny_bert, intent_data):
    """The same run with torch's default AdamW kernel (CPU: one tensor at a time)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("default_run"))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        return train(tiny_bert, intent_data, "optim.implementation=default")


@pytest.mark.parametrize("implementation", ["foreach", "fused"])
def test_optimiser_kernels_are_a_speed_switch_not_a_numerics_switch(
    implementation, default_run, workdir, tiny_bert, intent_data
):
    losses, module = train(tiny_bert, intent_data, f"optim.implementation={implementation}")
    assert module.trainer.optimizers[0].defaults[implementation] is True  # fused: the default
    assert len(losses) == len(default_run[0]) > 3
    torch.testing.assert_close(losses, default_run[0], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compiled_model_trains_like_the_eager_one(tmp_path, workdir, intent_data):
    # without dropout: inductor draws dropout masks from its own RNG, so only then runs match
    bert = build_tiny_bert(
        tmp_path / "bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    eager, _ = train(bert, intent_data)
    losses, module = train(bert, intent_data, "trainer.compile=true")
    assert module.model._compiled_call_impl is not None  # nn.Module.compile ran
    assert not any("_orig_mod" in key for key in module.state_dict())  # checkpoints unchanged
    torch.testing.assert_close(losses, eager, rtol=1e-3, atol=1e-4)


def test_bf16_mixed_clips_gradients_with_the_fused_default(
    monkeypatch, workdir, tiny_bert, intent_data
):
    # Lightning refuses to clip for a fused AdamW under mixed precision (its issue #21435), even
    # under bf16, which has no gradient scaler; gradient_clip_val is 1.0 by default
    norms = []
    clip = torch.nn.utils.clip_grad_norm_

    def recorded_clip(parameters, max_norm, *args, **kwargs):
        norms.append(float(clip(parameters, max_norm, *args, **kwargs)))
        return torch.tensor(norms[-1])

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recorded_clip)
    losses, module = train(tiny_bert, intent_data, "trainer.precision=bf16-mixed")
    assert module.trainer.optimizers[0].defaults["fused"] is True
    assert len(norms) == len(losses) > 3  # clipped before every optimiser step
    assert torch.isfinite(losses).all()


def test_fp16_with_clipping_steps_with_foreach():
    # fp16's gradient scaler unscales inside a fused step, too late for clipping (GPU only:
    # Lightning runs 16-mixed as bf16-mixed on a CPU)
    assert adamw_kernel("fused", scales_loss=True) == {"foreach": True}
    assert adamw_kernel("fused", scales_loss=False) == {"fused": True}
    assert adamw_kernel("default", scales_loss=True) == {}
