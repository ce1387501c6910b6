"""The preference losses on sequence log-probabilities, and the metrics they report.

Every loss takes a `Logps` of one batch (the policy's, and the reference's where the loss has
one) and returns a `Scores`: the batch loss and per-example rewards and log-probabilities, as TRL
computes them (cross-checked against TRL in `tests/test_preference.py`). With `lr_c = pi_c -
ref_c` the log-ratio of a chosen response (summed log-probs), `lr_r` the rejected one's, and
`m_c`, `m_r` per-token mean log-probs:

- `dpo` (Rafailov et al. 2023): `-logsigmoid(beta * (lr_c - lr_r))`.
- `ipo` (Azar et al. 2023): `(lr_c / |c| - lr_r / |r| - 1 / (2 beta))^2` (per token, as TRL).
- `orpo` (Hong et al. 2024): chosen NLL `- beta * logsigmoid(log odds(m_c) - log odds(m_r))`,
  no reference.
- `simpo` (Meng et al. 2024): `-logsigmoid(beta * (m_c - m_r) - gamma)`, no reference.
- `kto` (Ethayarajh et al. 2024), unpaired: `1 - sigmoid(beta * (lr - z))` for a desirable
  completion, `1 - sigmoid(beta * (z - lr))` for an undesirable one, `z` the batch's detached,
  clamped KL estimate from mismatched (prompt, completion) rows.

Rewards are `beta * lr` with a reference, `beta * m` without one (TRL's ORPO and CPO/SimPO).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchmetrics import Metric

IGNORE = -100
REFERENCED = ("dpo", "ipo", "kto")  # the losses that compare the policy with a reference
STATS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
)


@dataclass
class Logps:
    """Summed log-probabilities of the response tokens and their counts, one row per sequence.

    Paired batches hold [chosen; rejected] rows; unpaired (KTO) batches [completions; mismatched
    completions] (the second half only estimates the KL term).
    """

    total: torch.Tensor
    tokens: torch.Tensor

    def halves(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(first half, second half) of the summed log-probabilities."""
        return self.total.chunk(2, dim=0)

    def means(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(first half, second half) of the per-token mean log-probabilities."""
        mean = self.total / self.tokens.clamp(min=1)
        return mean.chunk(2, dim=0)


@dataclass
class Scores:
    """One batch's loss, and per-example values for the metrics."""

    loss: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor

    def stats(self) -> dict[str, torch.Tensor]:
        """Per-example values by metric name (TRL's names), detached, in float."""
        chosen, rejected = self.chosen_rewards.detach(), self.rejected_rewards.detach()
        if chosen.shape == rejected.shape:  # pairs: is chosen's reward the larger?
            accurate = (chosen > rejected).float()
        else:  # unpaired: does the reward's sign match the label?
            accurate = torch.cat([(chosen > 0).float(), (rejected < 0).float()])
        values = [chosen, rejected, accurate, self.chosen_logps, self.rejected_logps]
        return {name: v.detach().float() for name, v in zip(STATS, values, strict=True)}


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> Logps:
    """Log-probabilities of the labelled tokens (labels -100: prompt and padding), per row.

    Logits at t predict the token at t + 1; virtual tokens that prompt-learning methods
    prepend are cut off (the last `labels.shape[1]` positions are the real ones).
    """
    logits = logits[:, -labels.shape[1] :][:, :-1].float()
    labels = labels[:, 1:]
    mask = labels != IGNORE
    picked = torch.gather(logits, 2, labels.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
    token_logps = picked - torch.logsumexp(logits, dim=-1)
    return Logps((token_logps * mask).sum(-1), mask.sum(-1))


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable on both sides of -ln 2."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def dpo(policy: Logps, reference: Logps, beta: float) -> Scores:
    """DPO's sigmoid loss on summed log-probabilities."""
    (pc, pr), (rc, rr) = policy.halves(), reference.halves()
    losses = -F.logsigmoid(beta * ((pc - rc) - (pr - rr)))
    return Scores(losses.mean(), beta * (pc - rc), beta * (pr - rr), pc, pr)


def ipo(policy: Logps, reference: Logps, beta: float) -> Scores:
    """IPO's squared loss on per-token log-ratios (as TRL, confirmed by IPO's authors)."""
    (pc, pr), (rc, rr) = policy.halves(), reference.halves()
    nc, nr = policy.tokens.clamp(min=1).chunk(2, dim=0)
    losses = ((pc - rc) / nc - (pr - rr) / nr - 1 / (2 * beta)) ** 2
    return Scores(losses.mean(), beta * (pc - rc), beta * (pr - rr), pc, pr)


def orpo(policy: Logps, beta: float) -> Scores:
    """ORPO: the chosen responses' NLL minus β times the log-sigmoid of the log odds ratio."""
    mc, mr = policy.means()
    log_odds = (mc - mr) - (log1mexp(mc) - log1mexp(mr))
    chosen_total, _ = policy.halves()
    chosen_tokens, _ = policy.tokens.chunk(2, dim=0)
    nll = -chosen_total.sum() / chosen_tokens.sum().clamp(min=1)
    loss = nll - beta * F.logsigmoid(log_odds).mean()
    return Scores(loss, beta * mc, beta * mr, mc, mr)


def simpo(policy: Logps, beta: float, gamma: float) -> Scores:
    """SimPO: length-normalised log-probabilities and a target margin gamma."""
    mc, mr = policy.means()
    losses = -F.logsigmoid(beta * (mc - mr) - gamma)
    return Scores(losses.mean(), beta * mc, beta * mr, mc, mr)


def kto(policy: Logps, reference: Logps, desirable: torch.Tensor, beta: float) -> Scores:
    """KTO with the KL estimate of the batch's mismatched rows (second half)."""
    (pt, pk), (rt, rk) = policy.halves(), reference.halves()
    kl = (pk - rk).mean().detach().clamp(min=0)
    ratios = pt - rt
    good, bad = desirable.bool(), ~desirable.bool()
    losses = torch.cat(
        [
            1 - torch.sigmoid(beta * (ratios[good] - kl)),
            1 - torch.sigmoid(beta * (kl - ratios[bad])),
        ]
    )
    return Scores(losses.mean(), beta * ratios[good], beta * ratios[bad], pt[good], pt[bad])


class PreferenceStats(Metric):
    """Means of `Scores.stats` over an epoch, plus `rewards/margins` (chosen - rejected)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("sums", torch.zeros(len(STATS), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("counts", torch.zeros(len(STATS), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, stats: dict[str, torch.Tensor], _: object = None) -> None:
        """Add one batch's per-example values."""
        for i, name in enumerate(STATS):
            self.sums[i] += stats[name].double().sum()
            self.counts[i] += stats[name].numel()

    def compute(self) -> dict[str, torch.Tensor]:
        """Each mean (NaN when the epoch had no such example) and the margin of the means."""
        means = (self.sums / self.counts).float()
        found = dict(zip(STATS, means, strict=True))
        found["rewards/margins"] = found["rewards/chosen"] - found["rewards/rejected"]
        return found


def batch_means(stats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One batch's means of `Scores.stats` with its margin (the training step's logs)."""
    found = {name: v.mean() for name, v in stats.items() if v.numel()}
    if "rewards/chosen" in found and "rewards/rejected" in found:
        found["rewards/margins"] = found["rewards/chosen"] - found["rewards/rejected"]
    return found
