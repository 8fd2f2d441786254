import math

import pytest
import torch
import torch.nn.functional as F

from align.losses import (
    LOSSES,
    PreferenceBatch,
    PreferenceLoss,
    aggregate,
    clipped_surrogate,
    dpo_loss,
    grpo_advantages,
    grpo_loss,
    kl_estimate,
    sequence_logprobs,
    token_logprobs,
)


def _t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


# ------------------------------------------------------------------------------------------- log-probs


def test_sequence_logprobs_matches_manual_gather():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7)
    labels = torch.randint(0, 7, (2, 4))
    mask = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 0]])
    logp = F.log_softmax(logits, dim=-1)
    expected = torch.stack([sum(logp[b, t, labels[b, t]] for t in range(4) if mask[b, t]) for b in range(2)])
    torch.testing.assert_close(sequence_logprobs(logits, labels, mask), expected)
    torch.testing.assert_close(token_logprobs(logits, labels)[0, 1], logp[0, 1, labels[0, 1]])


def test_sequence_logprobs_ignores_masked_negative_labels():
    logits = torch.randn(1, 3, 5)
    labels = torch.tensor([[-100, 2, 4]])
    mask = torch.tensor([[0, 1, 1]])
    expected = F.log_softmax(logits, -1)[0, [1, 2], [2, 4]].sum()
    torch.testing.assert_close(sequence_logprobs(logits, labels, mask)[0], expected)


# ------------------------------------------------------------------------------------------- DPO


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_is_log2_when_policy_equals_reference(beta):
    pc, pr = _t(-3.0, -10.0), _t(-5.0, -2.0)
    loss, chosen_r, rejected_r = dpo_loss(pc, pr, pc.clone(), pr.clone(), beta)
    torch.testing.assert_close(loss, torch.full_like(loss, math.log(2)))
    assert torch.all(chosen_r == 0) and torch.all(rejected_r == 0)


def test_dpo_sigmoid_gradient_raises_chosen_lowers_rejected():
    pc = _t(-3.0, -4.0).requires_grad_()
    pr = _t(-5.0, -1.0).requires_grad_()
    loss, _, _ = dpo_loss(pc, pr, _t(-3.5, -4.0), _t(-4.0, -1.5), beta=0.1)
    loss.mean().backward()
    assert torch.all(pc.grad < 0) and torch.all(pr.grad > 0)


def test_dpo_rewards_are_detached_and_scaled():
    pc = _t(-1.0).requires_grad_()
    _, chosen_r, rejected_r = dpo_loss(pc, _t(-2.0), _t(-3.0), _t(-1.0), beta=0.5)
    assert not chosen_r.requires_grad
    torch.testing.assert_close(chosen_r, _t(1.0))
    torch.testing.assert_close(rejected_r, _t(-0.5))


def test_dpo_variants_hand_values():
    # h = (pc - rc) - (pr - rr) = (-1 - -2) - (-3 - -2) = 1 - (-1) = 2
    args = (_t(-1.0), _t(-3.0), _t(-2.0), _t(-2.0))
    ipo, _, _ = dpo_loss(*args, beta=0.25, loss_type="ipo")  # (2 - 1/0.5)^2 = 0
    torch.testing.assert_close(ipo, _t(0.0))
    ipo, _, _ = dpo_loss(*args, beta=1.0, loss_type="ipo")  # (2 - 0.5)^2
    torch.testing.assert_close(ipo, _t(2.25))
    hinge, _, _ = dpo_loss(*args, beta=0.1, loss_type="hinge")  # relu(1 - 0.2)
    torch.testing.assert_close(hinge, _t(0.8))
    hinge, _, _ = dpo_loss(*args, beta=1.0, loss_type="hinge")  # relu(1 - 2)
    torch.testing.assert_close(hinge, _t(0.0))
    sig, _, _ = dpo_loss(*args, beta=0.5, loss_type="sigmoid")  # -log sigma(1) = log(1 + e^-1)
    torch.testing.assert_close(sig, _t(math.log1p(math.exp(-1))))


def test_dpo_label_smoothing_hand_value():
    args = (_t(-1.0), _t(-3.0), _t(-2.0), _t(-2.0))  # h = 2, beta h = 1
    loss, _, _ = dpo_loss(*args, beta=0.5, label_smoothing=0.1)
    expected = 0.9 * math.log1p(math.exp(-1)) + 0.1 * math.log1p(math.exp(1))
    torch.testing.assert_close(loss, _t(expected))


def test_dpo_bad_input():
    args = (_t(-1.0), _t(-3.0), _t(-2.0), _t(-2.0))
    with pytest.raises(ValueError, match="valid"):
        dpo_loss(*args, beta=0.1, loss_type="no-such-loss")
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(*args, beta=0.1, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="reference"):
        dpo_loss(_t(-1.0), _t(-3.0), None, None, beta=0.1)
    with pytest.raises(ValueError, match="completion lengths"):
        dpo_loss(_t(-1.0), _t(-3.0), None, None, beta=0.1, loss_type="simpo")


def test_the_loss_registry_refuses_a_broken_entry():
    def entry(name, loss):
        return type(name, (PreferenceLoss,), {"loss": staticmethod(loss)} if loss else {})

    with pytest.raises(TypeError, match="must subclass PreferenceLoss"):
        LOSSES["bare"] = lambda batch, beta, opts: (batch.policy.mean(), {})
    with pytest.raises(TypeError, match="does not declare loss"):
        LOSSES["empty"] = entry("Empty", None)
    with pytest.raises(TypeError, match="one finite scalar loss"):
        LOSSES["per_row"] = entry("PerRow", lambda batch, beta, opts: (batch.policy, {}))
    with pytest.raises(TypeError, match="one finite scalar loss"):
        LOSSES["log"] = entry("Log", lambda batch, beta, opts: (batch.policy.sum().log(), {}))  # NaN: log-probs < 0
    with pytest.raises(TypeError, match="metrics"):
        LOSSES["unnamed"] = entry("Unnamed", lambda batch, beta, opts: (batch.policy.mean(), {"m": batch.policy}))
    assert not {"bare", "empty", "per_row", "log", "unnamed"} & set(LOSSES)


def test_simpo_hand_values_need_no_reference():
    # length-normalised: -6 / 3 = -2 (chosen), -12 / 4 = -3 (rejected); h = 1
    pc, pr = _t(-6.0).requires_grad_(), _t(-12.0)
    tokens = (_t(3.0), _t(4.0))
    loss, chosen_r, rejected_r = dpo_loss(pc, pr, None, None, beta=2.0, loss_type="simpo", gamma=0.5,
                                          chosen_tokens=tokens[0], rejected_tokens=tokens[1])
    torch.testing.assert_close(loss, _t(math.log1p(math.exp(-(2.0 * 1 - 0.5)))))  # -log sigma(beta h - gamma)
    torch.testing.assert_close(chosen_r, _t(-4.0))  # beta * logp / |y|
    torch.testing.assert_close(rejected_r, _t(-6.0))
    loss.sum().backward()  # d/d pc = -sigma(-(beta h - gamma)) * beta / |y_w|
    torch.testing.assert_close(pc.grad, _t(-torch.sigmoid(torch.tensor(-1.5, dtype=torch.float64)).item() * 2 / 3))
    # the same log-probs with a reference: simpo ignores it (no reference term)
    same, _, _ = dpo_loss(_t(-6.0), pr, _t(100.0), _t(-100.0), beta=2.0, loss_type="simpo", gamma=0.5,
                          chosen_tokens=tokens[0], rejected_tokens=tokens[1])
    torch.testing.assert_close(same, loss.detach())
    smooth, _, _ = dpo_loss(_t(-6.0), pr, None, None, beta=2.0, loss_type="simpo", label_smoothing=0.1, gamma=0.5,
                            chosen_tokens=tokens[0], rejected_tokens=tokens[1])
    torch.testing.assert_close(smooth, _t(0.9 * math.log1p(math.exp(-1.5)) + 0.1 * math.log1p(math.exp(1.5))))


def _batch(chosen: float, rejected: float) -> PreferenceBatch:
    """One chosen and one rejected completion of 2 tokens each, reference log-probs -2 (also read unpaired)."""
    policy = _t(chosen, rejected)
    return PreferenceBatch.pairs(policy, _t(-2.0, -2.0), _t(2.0, 2.0), (-policy / 2).unsqueeze(-1).expand(2, 2))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_is_finite_and_prefers_a_larger_margin(name):
    entry = LOSSES[name]
    opts = entry.section() if entry.section is not None else None
    (wide, wide_logs), (narrow, _) = (entry.loss(_batch(*pair), 0.1, opts) for pair in [(-1.0, -3.0), (-1.5, -2.5)])
    assert torch.isfinite(wide) and wide <= narrow  # a larger chosen-over-rejected margin costs less (h < ipo target)
    assert all(v.dim() == 0 and not v.requires_grad for v in wide_logs.values())


# ------------------------------------------------------------------------------------------- GRPO


def test_grpo_advantages_group_zero_mean_and_equal_group_zero():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.3, 0.3, 0.3, 0.3, 0.2, 0.9, 0.1, 0.4])
    adv = grpo_advantages(rewards, group_size=4)
    groups = adv.view(3, 4)
    torch.testing.assert_close(groups.mean(-1), torch.zeros(3))
    assert torch.all(groups[1] == 0)
    r = rewards.view(3, 4)[0]
    torch.testing.assert_close(groups[0], (r - r.mean()) / (r.std() + 1e-4))


def test_grpo_advantages_batch_and_none_scaling():
    rewards = torch.tensor([1.0, 0.0, 3.0, 1.0])
    torch.testing.assert_close(grpo_advantages(rewards, 2, scale="none"), torch.tensor([0.5, -0.5, 1.0, -1.0]))
    batch = grpo_advantages(rewards, 2, scale="batch")
    torch.testing.assert_close(batch, torch.tensor([0.5, -0.5, 1.0, -1.0]) / (rewards.std() + 1e-4))


def test_grpo_advantages_bad_input():
    with pytest.raises(ValueError, match="group_size"):
        grpo_advantages(torch.zeros(5), group_size=2)
    with pytest.raises(ValueError, match="valid"):
        grpo_advantages(torch.zeros(4), group_size=2, scale="rank")


@pytest.mark.parametrize("adv", [2.0, -2.0])
def test_clipped_surrogate_inside_and_outside_the_clip(adv):
    eps = 0.2
    ratios = torch.tensor([[0.5, 0.9, 1.0, 1.1, 1.5]])
    old = torch.zeros(1, 5)
    loss = clipped_surrogate(ratios.log(), old, torch.tensor([adv]), eps_low=eps)
    inside = slice(1, 4)
    torch.testing.assert_close(loss[0, inside], -ratios[0, inside] * adv)
    if adv > 0:  # high ratio clipped at 1 + eps; low ratio keeps the (smaller) unclipped value
        expected_out = torch.tensor([-0.5 * adv, -1.2 * adv])
    else:  # low ratio clipped at 1 - eps; high ratio keeps the unclipped value
        expected_out = torch.tensor([-0.8 * adv, -1.5 * adv])
    torch.testing.assert_close(loss[0, [0, 4]], expected_out)


def test_clipped_surrogate_clip_higher():
    ratios = torch.tensor([[1.25, 1.4]])
    loss = clipped_surrogate(ratios.log(), torch.zeros(1, 2), torch.tensor([1.0]), eps_low=0.2, eps_high=0.28)
    torch.testing.assert_close(loss, torch.tensor([[-1.25, -1.28]]))


def test_clipped_surrogate_gradient_zero_when_clipped():
    logp = torch.log(torch.tensor([[1.5, 1.0]])).requires_grad_()
    clipped_surrogate(logp, torch.zeros(1, 2), torch.tensor([1.0]), eps_low=0.2).sum().backward()
    assert logp.grad[0, 0] == 0 and logp.grad[0, 1] != 0


def test_kl_estimate_nonnegative_and_zero_when_equal():
    torch.manual_seed(0)
    logp, ref = -torch.rand(3, 6) * 5, -torch.rand(3, 6) * 5
    assert torch.all(kl_estimate(logp, ref) >= 0)
    assert torch.all(kl_estimate(logp, logp.clone()) == 0)
    torch.testing.assert_close(kl_estimate(_t(-1.0), _t(-2.0)), _t(math.exp(-1) + 1 - 1))


def test_aggregate_levels_hand_computed():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 100.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    torch.testing.assert_close(aggregate(x, mask, "token"), torch.tensor(10.0 / 4))
    torch.testing.assert_close(aggregate(x, mask, "sequence"), torch.tensor((2.0 + 4.0) / 2))
    with pytest.raises(ValueError, match="valid"):
        aggregate(x, mask, "batch")


def test_grpo_loss_on_policy_is_minus_mean_advantage():
    logp = -torch.rand(2, 3)
    adv = torch.tensor([1.0, -0.5])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    loss, stats = grpo_loss(logp, logp.detach(), logp.detach(), adv, mask, beta=0.04, eps_low=0.2)
    torch.testing.assert_close(loss, torch.tensor(-(2 * 1.0 + 3 * -0.5) / 5))
    assert stats["kl"] == 0 and stats["clip_fraction"] == 0


def test_grpo_loss_adds_kl_and_counts_clips():
    logp = torch.log(torch.tensor([[1.5, 1.0], [0.5, 1.0]]))
    ref = torch.zeros(2, 2)
    mask = torch.ones(2, 2)
    adv = torch.tensor([1.0, -1.0])
    loss0, stats = grpo_loss(logp, torch.zeros(2, 2), ref, adv, mask, beta=0.0, eps_low=0.2)
    loss1, _ = grpo_loss(logp, torch.zeros(2, 2), ref, adv, mask, beta=0.1, eps_low=0.2)
    torch.testing.assert_close(loss1 - loss0, 0.1 * kl_estimate(logp, ref).mean())
    assert stats["clip_fraction"] == 0.5  # ratio 1.5 with A > 0 and ratio 0.5 with A < 0
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, logp, None, adv, mask, beta=0.1, eps_low=0.2)
