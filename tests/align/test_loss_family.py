"""ORPO, KTO and the GRPO variants (RLOO, GSPO, CISPO) against their papers' formulas, written out element by
element on small random tensors (float64)."""

import math

import pytest
import torch

from align.losses import LOSSES, PreferenceBatch, grpo_advantages, grpo_loss
from align.losses.kto import KTOOptions
from align.losses.orpo import ORPOOptions


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _random_batch(n: int, seed: int, paired: bool) -> PreferenceBatch:
    g = torch.Generator().manual_seed(seed)
    T = 5
    tokens = torch.randint(1, T + 1, (n,), generator=g).double()  # (N,)
    mask = (torch.arange(T).unsqueeze(0) < tokens.unsqueeze(1)).double()  # (N, T)
    token_nll = torch.rand(n, T, generator=g, dtype=torch.float64) * 3 * mask  # (N, T)
    policy = -token_nll.sum(-1)  # (N,)
    reference = policy + torch.randn(n, generator=g, dtype=torch.float64)
    if paired:
        return PreferenceBatch.pairs(policy, reference, tokens, token_nll)
    return PreferenceBatch(policy, reference, tokens, token_nll, torch.rand(n, generator=g) < 0.5)


# ------------------------------------------------------------------------------------------- ORPO


@pytest.mark.parametrize("seed", [0, 1])
def test_orpo_matches_eq_6_and_7_by_hand(seed):
    batch = _random_batch(6, seed, paired=True)
    lam = 0.3
    loss, logs = LOSSES["orpo"].loss(batch, 0.1, ORPOOptions(ratio_weight=lam))
    B, expected = 3, []
    for i in range(B):
        p_w = math.exp(batch.policy[i].item() / batch.tokens[i].item())  # eq. 4: length-normalised likelihood
        p_l = math.exp(batch.policy[i + B].item() / batch.tokens[i + B].item())
        log_or = math.log(p_w / (1 - p_w)) - math.log(p_l / (1 - p_l))
        nll = batch.token_nll[i].sum().item() / batch.tokens[i].item()  # eq. 2, chosen side
        expected.append(nll - lam * math.log(_sigmoid(log_or)))  # eq. 6-7
    torch.testing.assert_close(loss, torch.tensor(sum(expected) / B, dtype=torch.float64))
    assert logs["nll"] > 0 and not loss.isnan()


def test_orpo_needs_no_reference_and_a_certain_completion_stays_finite():
    assert not LOSSES["orpo"].needs_reference
    policy = torch.tensor([0.0, -2.0], dtype=torch.float64, requires_grad=True)  # chosen P = 1
    batch = PreferenceBatch.pairs(policy, None, torch.tensor([2.0, 2.0]), torch.zeros(2, 2))
    loss, _ = LOSSES["orpo"].loss(batch, 0.1, ORPOOptions())
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(policy.grad).all()


# ------------------------------------------------------------------------------------------- KTO


@pytest.mark.parametrize("seed", [0, 3])
def test_kto_matches_eq_8_by_hand(seed):
    batch = _random_batch(7, seed, paired=False)
    beta, lam_d, lam_u = 0.5, 1.0, 1.33
    loss, logs = LOSSES["kto"].loss(batch, beta, KTOOptions(desirable_weight=lam_d, undesirable_weight=lam_u))
    r = [(p - q).item() for p, q in zip(batch.policy, batch.reference)]
    z0 = max(0.0, sum(r) / len(r))  # batch KL estimate, clamped at 0
    per = [lam_d - lam_d * _sigmoid(beta * (ri - z0)) if good else lam_u - lam_u * _sigmoid(beta * (z0 - ri))
           for ri, good in zip(r, batch.desirable.tolist())]
    torch.testing.assert_close(loss, torch.tensor(sum(per) / len(per), dtype=torch.float64))
    torch.testing.assert_close(logs["kl"], torch.tensor(z0, dtype=torch.float64))


def test_kto_reference_point_is_detached_and_clamped():
    policy = torch.tensor([-1.0, -5.0, -2.0], dtype=torch.float64, requires_grad=True)
    reference = torch.tensor([-3.0, -4.0, -2.0], dtype=torch.float64)  # r = 2, -1, 0: mean 1/3
    desirable = torch.tensor([True, False, True])
    batch = PreferenceBatch(policy, reference, torch.ones(3), torch.zeros(3, 1), desirable)
    loss, _ = LOSSES["kto"].loss(batch, 1.0, KTOOptions())
    loss.backward()
    # with z0 constant, d/dr_i of (1 - sigma(+-(r_i - z0))) / 3 is -+sigma'(.) / 3: no cross terms through z0
    z0 = 1 / 3
    s = [_sigmoid(2 - z0), _sigmoid(z0 + 1), _sigmoid(0 - z0)]
    expected = [-s[0] * (1 - s[0]) / 3, s[1] * (1 - s[1]) / 3, -s[2] * (1 - s[2]) / 3]
    torch.testing.assert_close(policy.grad, torch.tensor(expected, dtype=torch.float64))
    below = PreferenceBatch(policy.detach(), policy.detach() + 1, torch.ones(3), torch.zeros(3, 1), desirable)
    assert LOSSES["kto"].loss(below, 1.0, KTOOptions())[1]["kl"] == 0  # mean log-ratio -1: clamped


# ------------------------------------------------------------------------------------------- GRPO variants


def test_rloo_leave_one_out_baseline_by_hand():
    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(12, generator=g)
    adv = grpo_advantages(rewards, group_size=4, scale="none", baseline="leave_one_out")
    r = rewards.view(3, 4).tolist()
    expected = [r[k][i] - sum(r[k][j] for j in range(4) if j != i) / 3 for k in range(3) for i in range(4)]
    torch.testing.assert_close(adv, torch.tensor(expected))


def _rollout(seed: int):
    g = torch.Generator().manual_seed(seed)
    B, T = 4, 6
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3  # (B, T)
    logp = (old + 0.4 * torch.randn(B, T, generator=g, dtype=torch.float64)).requires_grad_()
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    mask = torch.ones(B, T, dtype=torch.float64)
    mask[0, 4:], mask[2, 1:] = 0, 0
    return logp, old, adv, mask


@pytest.mark.parametrize("seed", [0, 1])
def test_gspo_sequence_ratio_clipped_per_sequence_by_hand(seed):
    logp, old, adv, mask = _rollout(seed)
    el, eh = 0.1, 0.15
    loss, stats = grpo_loss(logp, old, None, adv, mask, 0.0, el, eh, level="sequence", objective="gspo")
    expected, clipped_tokens = 0.0, 0.0
    for i in range(4):
        n = int(mask[i].sum())
        s = math.exp(sum((logp[i, t] - old[i, t]).item() for t in range(n)) / n)  # mean token log-ratio
        a = adv[i].item()
        expected += -min(s * a, min(max(s, 1 - el), 1 + eh) * a) / 4  # 1/G sum_i
        clipped_tokens += n * ((s < 1 - el and a < 0) or (s > 1 + eh and a > 0))
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(stats["clip_fraction"], torch.tensor(clipped_tokens / mask.sum().item(),
                                                                     dtype=torch.float64))


def test_gspo_gradient_is_the_sequence_ratio_times_the_mean_token_score():
    logp, old, adv, mask = _rollout(2)
    loss, _ = grpo_loss(logp, old, None, adv, mask, 0.0, 10.0, 10.0, level="sequence", objective="gspo")
    loss.backward()  # no clipping: d/d logp_t of -s A / B = -s A / (B |y|) on each completion token
    n = mask.sum(-1, keepdim=True)
    s = torch.exp(((logp - old) * mask).sum(-1, keepdim=True) / n).detach()
    torch.testing.assert_close(logp.grad, -s * adv.unsqueeze(-1) * mask / (4 * n))


@pytest.mark.parametrize("seed", [0, 1])
def test_cispo_clipped_stop_gradient_weight_by_hand(seed):
    logp, old, adv, mask = _rollout(seed)
    el, eh = 0.2, 0.1
    loss, stats = grpo_loss(logp, old, None, adv, mask, 0.0, el, eh, level="token", objective="cispo")
    loss.backward()
    weight = torch.exp(logp.detach() - old).clamp(1 - el, 1 + eh)  # sg(clip(ratio))
    n = mask.sum()
    expected = sum(-weight[i, t] * adv[i] * logp[i, t].detach() * mask[i, t] for i in range(4) for t in range(6)) / n
    torch.testing.assert_close(loss.detach(), expected)
    torch.testing.assert_close(logp.grad, -weight * adv.unsqueeze(-1) * mask / n)  # every token keeps a gradient
    ratio = torch.exp(logp.detach() - old)
    outside = ((ratio < 1 - el) | (ratio > 1 + eh)).double()
    torch.testing.assert_close(stats["clip_fraction"], (outside * mask).sum() / n)


def test_an_unknown_objective_or_baseline_names_the_valid_ones():
    logp, old, adv, mask = _rollout(0)
    with pytest.raises(ValueError, match="valid.*cispo"):
        grpo_loss(logp, old, None, adv, mask, 0.0, 0.2, objective="ppo2")
    with pytest.raises(ValueError, match="valid.*leave_one_out"):
        grpo_advantages(torch.rand(4), 2, baseline="median")
