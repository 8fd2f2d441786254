"""PPO with a value head: GAE and the clipped value loss by hand, whitening, a value head that learns a known
return, an end-to-end run that logs TRL's metric names, saves the head and resumes exactly, and refused options."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import stop_at, tiny_finetune_values, tiny_model_config, train_losses
from safetensors.torch import load_file
from torch import nn

from align.losses import PPOObjective, PPOOptions, gae, ppo_advantages, ppo_loss, value_loss
from align.losses.ppo import explained_variance, token_rewards, whiten
from align.policy import align_config
from align.ppo import VALUE_HEAD, PPOModel, main, train_ppo
from model.lora import lora_parameters
from model.transformer import Transformer
from train.cli import run_cli
from train.config import ConfigError
from train.report import read_metrics

LOGGED = ["train/reward", "train/rewards/word_inclusion", "train/loss", "objective/kl", "objective/entropy",
          "objective/scores", "objective/non_score_reward", "objective/rlhf_reward", "loss/policy_avg",
          "loss/value_avg", "policy/clipfrac_avg", "val/clipfrac_avg", "policy/approxkl_avg", "policy/entropy_avg",
          "val/explained_variance"]


def test_gae_by_hand_with_gamma_and_lambda_below_one():
    # t:        0 (prompt)  1     2     3 (last)  4 (padding); gamma = 0.9, lambda = 0.8, gamma lambda = 0.72
    r = torch.tensor([[9.0, 0.1, -0.2, 1.0, 7.0]])
    v = torch.tensor([[5.0, 0.5, 0.4, 0.8, 3.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]])
    # delta_3 = 1.0 + 0.9 * 0 - 0.8 = 0.2 (no value after the last token)   A_3 = 0.2
    # delta_2 = -0.2 + 0.9 * 0.8 - 0.4 = 0.12                              A_2 = 0.12 + 0.72 * 0.2 = 0.264
    # delta_1 = 0.1 + 0.9 * 0.4 - 0.5 = -0.04                              A_1 = -0.04 + 0.72 * 0.264 = 0.15008
    # R = A + V: 0.65008, 0.664, 1.0; the prompt and padding positions are 0
    advantages, returns = gae(r, v, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(advantages, torch.tensor([[0.0, 0.15008, 0.264, 0.2, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[0.0, 0.65008, 0.664, 1.0, 0.0]]))


def test_gae_with_lambda_and_gamma_one_is_reward_to_go_minus_value_and_ignores_masked_tokens():
    torch.manual_seed(0)
    r, v = torch.randn(3, 6), torch.randn(3, 6)
    mask = torch.tensor([[0, 1, 1, 1, 1, 0], [0, 0, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.float32)
    advantages, returns = gae(r, v, mask, gamma=1.0, lam=1.0)
    to_go = (r * mask).flip(-1).cumsum(-1).flip(-1)  # (N, T) sum_{k >= t} r_k over completion tokens
    torch.testing.assert_close(advantages, (to_go - v) * mask)
    torch.testing.assert_close(returns, to_go * mask)
    noise = torch.randn(3, 6) * 100 * (1 - mask)  # other values and rewards off the mask change nothing
    again = gae(r + noise, v - noise, mask, gamma=0.7, lam=0.5)
    for a, b in zip(again, gae(r, v, mask, gamma=0.7, lam=0.5)):
        torch.testing.assert_close(a, b)


def test_token_rewards_put_the_score_on_the_last_token_and_the_kl_penalty_on_every_token():
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0]])
    logp, ref = torch.full((2, 4), -1.0), torch.full((2, 4), -1.5)  # log-ratio 0.5 on every position
    rewards = token_rewards(torch.tensor([2.0, 3.0]), logp, ref, mask, kl_coef=0.1)
    torch.testing.assert_close(rewards, torch.tensor([[0.0, -0.05, 1.95, 0.0], [0.0, -0.05, -0.05, 2.95]]))
    torch.testing.assert_close(token_rewards(torch.tensor([2.0, 3.0]), logp, None, mask, 0.0),
                               torch.tensor([[0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 3.0]]))


def test_clipped_value_loss_by_hand():
    values, old = torch.tensor([[1.0, 0.9, 100.0]]), torch.tensor([[0.5, 0.0, 0.0]])
    returns, mask = torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    # token 0: (1 - 0)^2 = 1 against clip(1, 0.3, 0.7) = 0.7 -> 0.49: max 1 (the unclipped term)
    # token 1: (0.9 - 1)^2 = 0.01 against clip(0.9, -0.2, 0.2) = 0.2 -> (0.2 - 1)^2 = 0.64: max 0.64 (clipped)
    # token 2 is off the mask. loss = 0.5 * (1 + 0.64) / 2 = 0.41, clip fraction 1/2
    loss, clipfrac = value_loss(values, old, returns, mask, clip=0.2)
    assert loss.item() == pytest.approx(0.41) and clipfrac.item() == pytest.approx(0.5)


def test_whitening_has_mean_zero_and_std_one_over_masked_tokens():
    torch.manual_seed(1)
    x, mask = torch.randn(4, 7) * 3 + 5, (torch.rand(4, 7) > 0.4).float()
    w = whiten(x, mask)
    picked = w[mask.bool()]
    assert picked.mean().item() == pytest.approx(0.0, abs=1e-6) and picked.std().item() == pytest.approx(1.0, abs=1e-5)
    assert (w[~mask.bool()] == 0).all()
    assert explained_variance(x, x, mask).item() == pytest.approx(1.0)


def test_policy_loss_is_the_clipped_surrogate_per_token_plus_the_weighted_value_loss():
    logp, old = torch.log(torch.tensor([[0.5, 0.9], [0.2, 0.3]])), torch.log(torch.tensor([[0.25, 0.9], [0.3, 0.3]]))
    advantages, mask = torch.tensor([[1.0, 2.0], [-1.0, 5.0]]), torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    values = torch.zeros(2, 2)
    opts = PPOOptions(vf_coef=0.5)
    loss, stats = ppo_loss(logp, old, values, values, advantages, values + 1, mask, opts, eps_low=0.2)
    # ratios 2 (clipped to 1.2, A = 1), 1 (A = 2), 2/3 (clipped to 0.8, A = -1: min(-2/3, -0.8) = -0.8)
    assert stats["policy_loss"].item() == pytest.approx(-(1.2 + 2.0 - 0.8) / 3)
    assert stats["policy_clipfrac"].item() == pytest.approx(2 / 3) and stats["value_loss"].item() == pytest.approx(0.5)
    assert loss.item() == pytest.approx(stats["policy_loss"].item() + 0.5 * 0.5)


def test_the_value_head_learns_a_known_return():
    """Sequences whose score is a function of their first token (seen by every later position): a few dozen
    steps of the clipped value loss, each on a fresh V_old, cut the value error by far."""
    torch.manual_seed(0)
    model, head = Transformer(tiny_model_config()), nn.Linear(32, 1)
    idx = torch.randint(0, 97, (16, 8))
    mask = torch.ones(16, 8)
    mask[:, :2] = 0  # a 2-token prompt
    scores = (idx[:, 0] % 2).float()  # the return is known: no KL, gamma = lambda = 1 -> R_t = score
    opts = PPOOptions(gamma=1.0, lam=1.0, kl_coef=0.0, whiten=False)
    optimizer = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=3e-3)

    def values() -> torch.Tensor:
        return head(model(idx, head=False)[0]).squeeze(-1)  # (N, T)

    with torch.no_grad():
        _, returns, _ = ppo_advantages(scores, torch.zeros(16, 8), None, torch.zeros(16, 8), mask, opts)
        first = (((values() - returns) ** 2) * mask).sum() / mask.sum()
    for _ in range(40):
        v = values()
        loss, _ = value_loss(v, v.detach(), returns, mask, clip=0.2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        last = (((values() - returns) ** 2) * mask).sum() / mask.sum()
    assert last < first / 10, (first.item(), last.item())


class Spy(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.module = pl_module
        self.ids = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}


def ppo_values(corpus, sft_run, out, **extra):
    values = tiny_finetune_values(corpus, out, sft_run, {}, **{"train.name": "ppo", "train.max_steps": 4,
                                                              "train.warmup_steps": 1, "train.ckpt_every": 2, **extra})
    values["align"] = {"group_size": 2, "prompts_per_step": 2, "num_iterations": 2, "max_new_tokens": 8,
                       "rewards": {"word_inclusion": 2.0, "length": 1.0},
                       "ppo": {"gamma": 0.99, "lam": 0.9, "kl_coef": 0.1, "vf_coef": 0.5}}
    return values


@pytest.fixture(scope="module")
def ppo_run(tiny_corpus, tiny_sft_run, tmp_path_factory):
    spy = Spy()
    return train_ppo(align_config(None, ppo_values(tiny_corpus, tiny_sft_run[1], tmp_path_factory.mktemp("ppo"))),
                     [spy]), spy


def test_ppo_trains_lora_and_the_value_head_and_logs_trl_names(ppo_run):
    run_dir, spy = ppo_run
    module = spy.module
    assert isinstance(module, PPOModel)
    head = {id(p) for p in module.value_head.parameters()}
    assert spy.ids == {id(p) for p in lora_parameters(module.model)} | head  # LoRA + the full value head
    assert module.value_head.weight.abs().sum() > 0  # it trained from its zero start
    rows = read_metrics(run_dir)
    for name in LOGGED:
        values = [r[name] for r in rows if name in r]
        assert len(values) == 4 and all(v == v for v in values), name  # every step, finite
    assert all((run_dir / name).stat().st_size > 0 for name in ("loss.png", "reward.png", "kl.png", "value.png"))
    saved = load_file(str(run_dir / VALUE_HEAD))
    assert all(torch.equal(saved[k], v.cpu()) for k, v in module.value_head.state_dict().items())
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_ppo_resumes_exactly(ppo_run, tiny_corpus, tiny_sft_run, tmp_path):
    full, _ = ppo_run
    cfg = lambda **extra: align_config(None, ppo_values(tiny_corpus, tiny_sft_run[1], tmp_path, **extra))  # noqa: E731
    first = train_ppo(cfg(), [stop_at(2)])  # a new rollout at step 2: the checkpoint holds all the state
    assert sorted(train_losses(first)) == [0, 1]
    resumed = train_ppo(cfg(**{"train.resume": True}))
    expected, got = train_losses(full), train_losses(resumed)
    assert sorted(got) == sorted(expected) == [0, 1, 2, 3]
    for step in expected:
        assert got[step] == pytest.approx(expected[step], abs=1e-6), step
    for name in (VALUE_HEAD, "adapter/adapter_model.safetensors"):
        a, b = load_file(str(full / name)), load_file(str(resumed / name))
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


@pytest.mark.parametrize("extra, message", [("--align.ppo.gamma=1.5", "align.ppo.gamma=1.5: must be at most 1.0"),
                                            ("--align.ppo.vf_coef=-1", "align.ppo.vf_coef=-1.0: must be at least 0"),
                                            ("--align.ppo.lam=-0.1", "align.ppo.lam=-0.1: must be at least 0")])
def test_bad_ppo_options_exit_2_in_one_line(tiny_corpus, tiny_sft_run, tmp_path, capsys, extra, message):
    args = [f"--data.path={tiny_corpus}", f"--finetune.base={tiny_sft_run[1]}", f"--train.out_dir={tmp_path}",
            "--train.name=refused", extra]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, args, load=align_config)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "refused").exists()
    with pytest.raises(ConfigError, match="align.ppo.gamma"):
        align_config(None, {"finetune": {"base": str(tiny_sft_run[1])}, "align": {"ppo": {"gamma": 2.0}}})


def test_the_example_config_builds(tiny_sft_run):
    path = Path(__file__).parents[2] / "configs" / "align" / "ppo.yaml"
    opts = PPOObjective.options(align_config(path, [f"--finetune.base={tiny_sft_run[1]}"]).align)
    assert (opts.gamma, opts.lam, opts.vf_coef, opts.kl_coef, opts.whiten) == (1.0, 0.95, 0.1, 0.05, True)
