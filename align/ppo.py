"""`python -m align.ppo --config configs/align/ppo.yaml [--section.key=value ...]`: PPO with a learned value head.

Proximal Policy Optimization as an actor-critic (Schulman et al. 2017, arXiv:1707.06347; for language models
Ouyang et al. 2022 and TRL's PPOTrainer): the policy samples completions of the training prompts, each gets the
programmatic reward of GRPO (align/rewards.py, `align.rewards`) at its last token, every token pays a KL penalty
to the reference, and GAE over the completion's tokens with a learned value function gives per-token advantages
(align/losses/ppo.py has the equations; options `align.ppo.{gamma, lam, vf_coef, cliprange_value, kl_coef,
whiten}`). Sampling, prompt batches, rewards and the loop are GRPO's (align/grpo.py: `GRPOModel.sample`,
`train_grpo`): a step decodes `align.prompts_per_step` x `align.group_size` completions, and each batch of samples
serves `align.num_iterations` optimizer steps (PPO's epochs), with pi_old's log-probs and V_old computed once,
at sampling time. `align.epsilon` / `align.epsilon_high` clip the ratio; `align.beta` (GRPO's k3 KL in the loss)
is not read: PPO's KL is the reward's, `align.ppo.kl_coef`.

The value function is a head, V(s_t) = w^T h_t + b: an nn.Linear(d_model, 1) on the policy's final-normed hidden
state h_t (B, T, D) (`Transformer.forward(head=False)`), not a separate critic network. On CPU that keeps one model
in memory and one forward for log-probs and values, and the critic starts from the policy's features rather than
from scratch. The cost: the policy and value gradients meet in the shared trunk (the LoRA adapter, or every weight
under finetune.method=full), so a large value loss can disturb the policy; `align.ppo.vf_coef` scales it down.
The head is a full trainable parameter under LoRA too, part of the LightningModule (so DDP all-reduces its
gradients and checkpoints hold it for resume), and is saved beside the adapter or weights as value_head.safetensors.

Logged per step (means over ranks). TRL's PPOTrainer names: objective/kl (sum over a completion of
log pi_old - log pi_ref, mean over completions), objective/entropy (sum of -log pi_old over a completion, mean),
objective/scores (the reward), objective/non_score_reward (the KL penalty's sum), objective/rlhf_reward (their
sum), loss/policy_avg, loss/value_avg, policy/clipfrac_avg, val/clipfrac_avg, policy/approxkl_avg,
policy/entropy_avg (mean per-token entropy, nats). Not in TRL: val/explained_variance (1 - Var(R - V) / Var(R)
over completion tokens), and GRPO's train/reward, train/reward_std, train/rewards/<term>, train/completion_length,
train/loss. Plots: loss.png, reward.png, kl.png and value.png (value loss and explained variance).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from align.grpo import GRPOModel, Rollout, entropy, train_grpo
from align.losses import PPOObjective, PPOOptions, ppo_advantages, ppo_loss, token_logprobs
from align.policy import align_config
from train.cli import run_cli
from train.config import Config
from train.optim import build_optimizer
from train.report import Plot
from train.rundir.atomic import replacing

VALUE_HEAD = "value_head.safetensors"


@dataclass
class PPORollout(Rollout):
    """GRPO's rollout with per-token advantages (N, T) and pi_old's log-probs (N, T) always set, plus:"""

    old_values: Tensor  # (N, T) V_old at sampling time
    returns: Tensor  # (N, T) lambda-returns R = A + V_old (before whitening A)


class ActorCritic(nn.Module):
    """What PPO's optimizer trains, in train/optim.py's parameter groups: the policy and its value head. The head
    is a 1 x D output like lm_head, not a hidden matrix: no weight decay, and AdamW under Muon."""

    def __init__(self, policy: nn.Module, value_head: nn.Linear):
        super().__init__()
        self.policy, self.value_head = policy, value_head
        self.lm_head = policy.lm_head  # the output head train/optim.py keeps out of Muon (the same module)

    def no_decay_parameters(self) -> list[nn.Parameter]:
        return [*self.policy.no_decay_parameters(), self.value_head.weight]


class PPOModel(GRPOModel):
    """GRPO's sampling and step with a value head: GAE advantages per token, clipped policy and value losses."""

    def __init__(self, cfg: Config, tokenizer, model, lora_cfg=None):
        super().__init__(cfg, tokenizer, model, lora_cfg)
        self.value_head = nn.Linear(cfg.model.d_model, 1)  # V(s_t) = w^T h_t + b
        nn.init.zeros_(self.value_head.weight)  # V = 0 at the start: no prior on the return
        nn.init.zeros_(self.value_head.bias)

    @property
    def opts(self) -> PPOOptions:
        return PPOObjective.options(self.cfg.align)

    def uses_reference(self) -> bool:
        return bool(self.opts.kl_coef)  # the reward's KL penalty is the only reader of pi_ref

    def plots(self) -> dict[str, Plot]:
        """GRPO's reward.png, kl.png with TRL's per-completion KL, and value.png (10-step means)."""
        return {**super().plots(), "kl.png": ("KL to the reference (nats/completion)", ("objective/kl",), 10),
                "value.png": ("value loss, explained variance", ("loss/value_avg", "val/explained_variance"), 10)}

    def configure_optimizers(self):
        t = self.cfg.train
        optimizer, scheduler = build_optimizer(ActorCritic(self.model, self.value_head), t,
                                               loss_scaling=t.precision == "16-mixed")
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def evaluate(self, inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One forward of the policy -> token log-probs (N, T) at the sampling temperature, logits (N, T, V) and
        values (N, T) (fp32)."""
        h, _ = self.model(inputs, head=False)  # (N, T, D) final-normed hidden states
        logits = self.model.lm_head(h)  # (N, T, V)
        logp = token_logprobs(logits / max(self.cfg.align.temperature, 1e-6), labels)
        return logp, logits, self.value_head(h).squeeze(-1).float()  # (N, T, 1) -> (N, T)

    @torch.no_grad()
    def rollout(self, prompt_ids: Tensor, lengths: Tensor, slot: int) -> PPORollout:
        """GRPO's samples and rewards, then pi_old, V_old and pi_ref on them, and the GAE advantages."""
        inputs, labels, mask, scores, sampled, old = self.sample(prompt_ids, lengths, slot)  # old: pi_old (N, T)
        h, _ = self.model(inputs, head=False)  # (N, T, D): V_old needs no logits (pi_old was recorded when sampling)
        values = self.value_head(h).squeeze(-1).float()  # (N, T, 1) -> (N, T)
        ref = None
        if self.uses_reference():
            with self.reference_model() as reference:
                ref = self.logprobs(reference, inputs, labels)[0]
        advantages, returns, rewards = ppo_advantages(scores, old, ref, values, mask, self.opts)
        kl = ((old - ref) * mask).sum(-1) if ref is not None else scores * 0  # (N,) nats per completion
        penalty = rewards.sum(-1) - scores  # (N,) -kl_coef * kl
        stats = {f"train/{k}": v for k, v in sampled.items()}
        stats.update({"objective/kl": kl.mean().item(), "objective/entropy": -(old * mask).sum(-1).mean().item(),
                      "objective/scores": scores.mean().item(), "objective/non_score_reward": penalty.mean().item(),
                      "objective/rlhf_reward": (scores + penalty).mean().item()})
        return PPORollout(inputs, labels, mask, advantages, old, ref, stats, values, returns)

    def compute_loss(self, r: PPORollout) -> tuple[Tensor, dict]:
        a = self.cfg.align
        logp, logits, values = self.evaluate(r.inputs, r.labels)  # (N, T), (N, T, V), (N, T)
        loss, stats = ppo_loss(logp, r.old_logp, values, r.old_values, r.advantages, r.returns, r.mask, self.opts,
                               a.epsilon, a.epsilon_high or None)
        return loss, {"train/loss": loss.detach(), "loss/policy_avg": stats["policy_loss"],
                      "loss/value_avg": stats["value_loss"], "policy/clipfrac_avg": stats["policy_clipfrac"],
                      "val/clipfrac_avg": stats["value_clipfrac"], "policy/approxkl_avg": stats["approx_kl"],
                      "val/explained_variance": stats["explained_variance"],
                      "policy/entropy_avg": entropy(logits, r.mask), **r.stats}

    def save_final_weights(self, run_dir: Path, state: dict | None = None) -> None:
        """The adapter or weights (GRPO's), and the value head beside them (value_head.safetensors)."""
        super().save_final_weights(run_dir, state)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.value_head.state_dict().items()}
        with replacing(Path(run_dir) / VALUE_HEAD) as tmp:  # temp + rename: never a half-written file
            save_file(tensors, str(tmp))


def train_ppo(cfg: Config, callbacks: list = ()) -> Path:
    """PPO from the SFT run cfg.finetune.base (GRPO's pipeline with PPOModel); returns the run directory."""
    return train_grpo(cfg, callbacks, stage=PPOModel)


def main(cfg: Config) -> None:
    train_ppo(cfg)


if __name__ == "__main__":
    run_cli(main, usage=__doc__, load=align_config)
