"""Each preference loss against TRL's own implementation on the same log-probabilities (1e-5).

TRL (1.16) is a test-only dependency. DPO/IPO and KTO are computed inline in
`DPOTrainer._compute_loss` / `KTOTrainer._compute_loss`; those methods are called unbound with a
stand-in trainer (`self`) whose model returns given per-token log-probabilities and whose
reference log-probabilities are "precomputed" (TRL's own `precompute_ref_logps` path). ORPO's
`odds_ratio_loss` and CPO/SimPO's `cpo_loss` are called with a namespace as `self`; ORPO's total
loss and the log-probabilities come from TRL's `get_batch_logps` and its NLL on the same logits.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tasks import preference_losses as losses

pytest.importorskip("trl")

B, T, V = 4, 12, 50


class Accelerator:
    """What `_compute_loss` asks of accelerate on one process."""

    device = torch.device("cpu")

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def unwrap_model(self, model):
        return model


def trainer(**fields) -> SimpleNamespace:
    """A stand-in TRL trainer: the attributes `_compute_loss` reads."""
    base = dict(
        model=SimpleNamespace(training=True),
        accelerator=Accelerator(),
        aux_loss_enabled=False,
        precompute_ref_logps=True,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    return SimpleNamespace(**(base | fields))


def token_logps(rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token log-probs [rows, T - 1], 0 outside the completion; completion mask [rows, T])."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(rows, T, dtype=torch.long)
    for i in range(rows):
        start = int(torch.randint(2, 6, (1,), generator=gen))
        end = int(torch.randint(start + 2, T + 1, (1,), generator=gen))
        mask[i, start:end] = 1
    logps = -torch.rand(rows, T - 1, generator=gen, dtype=torch.float64) * 3
    return (logps * mask[:, 1:]).float(), mask


def fake_model(per_token: torch.Tensor):
    """A model whose outputs carry TRL's fused-head fields for the given log-probs."""

    def model(**kwargs):
        zeros = torch.zeros_like(per_token)
        return SimpleNamespace(
            log_probs=per_token, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool()
        )

    return model


def ours(per_token: torch.Tensor, mask: torch.Tensor) -> losses.Logps:
    shifted = mask[:, 1:]
    return losses.Logps((per_token * shifted).sum(-1), shifted.sum(-1))


@pytest.mark.parametrize(("loss", "trl_loss"), [("dpo", "sigmoid"), ("ipo", "ipo")])
def test_dpo_and_ipo_match_trl(loss: str, trl_loss: str):
    from trl import DPOTrainer

    policy, mask = token_logps(2 * B, seed=1)
    reference, _ = token_logps(2 * B, seed=2)
    reference = reference * mask[:, 1:]
    ref = ours(reference, mask)
    fake = trainer(
        ld_alpha=None, f_divergence_type="reverse_kl", loss_types=[trl_loss], loss_weights=[1.0],
        beta=0.3, use_weighting=False, label_smoothing=0.0,
    )  # fmt: skip
    inputs = {
        "input_ids": torch.ones(2 * B, T, dtype=torch.long),
        "attention_mask": torch.ones(2 * B, T, dtype=torch.long),
        "completion_mask": mask,
        "ref_chosen_logps": ref.halves()[0],
        "ref_rejected_logps": ref.halves()[1],
    }
    expected = DPOTrainer._compute_loss(fake, fake_model(policy), inputs, False)
    scores = getattr(losses, loss)(ours(policy, mask), ref, 0.3)
    assert float(scores.loss) == pytest.approx(float(expected), abs=1e-5)
    logged = fake._metrics["train"]
    for name, value in losses.batch_means(scores.stats()).items():
        assert float(value) == pytest.approx(logged[name][0], abs=1e-5), name


def test_kto_matches_trl():
    from trl import KTOTrainer

    policy, mask = token_logps(2 * B, seed=3)
    reference, _ = token_logps(2 * B, seed=4)
    reference = reference * mask[:, 1:]
    pol, ref = ours(policy, mask), ours(reference, mask)
    desirable = torch.tensor([True, False, True, True])
    fake = trainer(calculate_KL=True, loss_type="kto", beta=0.2)
    fake.desirable_weight = fake.undesirable_weight = 1.0
    fake._compute_kl_logps = lambda model, batch: pol.halves()[1]
    inputs = {
        "input_ids": torch.ones(B, T, dtype=torch.long),
        "attention_mask": torch.ones(B, T, dtype=torch.long),
        "completion_mask": mask[:B],
        "label": desirable,
        "ref_logps": ref.halves()[0],
        "ref_KL_logps": ref.halves()[1],
    }
    expected = KTOTrainer._compute_loss(fake, fake_model(policy[:B]), inputs, False)
    scores = losses.kto(pol, ref, desirable, 0.2)
    assert float(scores.loss) == pytest.approx(float(expected), abs=1e-5)
    logged = fake._metrics["train"]
    for name in ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"):
        assert float(scores.stats()[name].mean()) == pytest.approx(logged[name][0], abs=1e-5)


def logits_and_labels(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits [2B, T, V] and labels with -100 on prompt and padding."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2 * B, T, V, generator=gen) * 2
    labels = torch.randint(0, V, (2 * B, T), generator=gen)
    _, mask = token_logps(2 * B, seed)
    return logits, labels.masked_fill(mask == 0, -100)


def test_sequence_logps_match_trl_batch_logps():
    from trl.experimental.orpo import ORPOTrainer

    logits, labels = logits_and_labels(5)
    found = losses.sequence_logps(logits, labels)
    expected = ORPOTrainer.get_batch_logps(logits, labels, average_log_prob=False)
    assert torch.allclose(found.total, expected, atol=1e-5)
    mean = ORPOTrainer.get_batch_logps(logits, labels, average_log_prob=True)
    assert torch.allclose(torch.cat(found.means()), mean, atol=1e-5)


def test_orpo_matches_trl():
    from trl.experimental.orpo import ORPOTrainer

    logits, labels = logits_and_labels(6)
    mean = ORPOTrainer.get_batch_logps(logits, labels, average_log_prob=True)
    namespace = SimpleNamespace(beta=0.25, accelerator=Accelerator())
    ratio_losses, chosen, rejected, _, _ = ORPOTrainer.odds_ratio_loss(
        namespace, mean[:B], mean[B:]
    )
    nll = F.cross_entropy(logits[:B, :-1].reshape(-1, V), labels[:B, 1:].reshape(-1))
    scores = losses.orpo(losses.sequence_logps(logits, labels), 0.25)
    assert float(scores.loss) == pytest.approx(float(nll - ratio_losses.mean()), abs=1e-5)
    assert torch.allclose(scores.chosen_rewards, chosen, atol=1e-5)
    assert torch.allclose(scores.rejected_rewards, rejected, atol=1e-5)


def test_simpo_matches_trl():
    from trl.experimental.cpo import CPOTrainer

    logits, labels = logits_and_labels(7)
    mean = CPOTrainer.get_batch_logps(logits, labels, average_log_prob=True)
    namespace = SimpleNamespace(
        beta=2.0, simpo_gamma=0.7, alpha=0.0, loss_type="simpo", label_smoothing=0.0,
        accelerator=Accelerator(),
    )  # fmt: skip
    trl_losses, chosen, rejected = CPOTrainer.cpo_loss(namespace, mean[:B], mean[B:])
    scores = losses.simpo(losses.sequence_logps(logits, labels), 2.0, 0.7)
    assert float(scores.loss) == pytest.approx(float(trl_losses.mean()), abs=1e-5)
    assert torch.allclose(scores.chosen_rewards, chosen, atol=1e-5)
    assert torch.allclose(scores.rejected_rewards, rejected, atol=1e-5)


def test_dpo_at_the_reference_is_ln2_with_zero_rewards():
    policy, mask = token_logps(2 * B, seed=8)
    same = ours(policy, mask)
    scores = losses.dpo(same, same, 0.1)
    assert float(scores.loss) == pytest.approx(0.6931471805599453, abs=1e-7)
    assert scores.chosen_rewards.abs().max() == 0 and scores.rejected_rewards.abs().max() == 0
