"""`python -m align.grpo --config configs/align/grpo.yaml [--section.key=value ...]`: online RL with verifiable rewards.

Group Relative Policy Optimization (Shao et al. 2024, "DeepSeekMath", arXiv:2402.03300, §4.1, eq. 3): for each
prompt q, G completions o_1..o_G are sampled from pi_old, each gets a programmatic reward r_i (align/rewards.py:
word inclusion, dialogue, length, repetition, finished; weighted by `align.rewards`), and

    A_i   = (r_i - mean(r)) / std(r)           group-relative advantage, no critic (`align.scale`: the group's std
                                             as in the paper, the batch's, or none as in Dr. GRPO; `align.baseline`:
                                             the group mean, or leave_one_out for RLOO's mean of the other samples)
    rho_t = pi_theta(o_t | q, o_<t) / pi_old(o_t | q, o_<t)
    L     = -mean_t [min(rho_t A_i, clip(rho_t, 1 - eps, 1 + eps_high) A_i) - beta KL_t(pi_theta || pi_ref)]

(losses in align/losses/grpo.py; KL by the k3 estimator; `align.level` picks per-token or per-sequence averaging,
DAPO/Dr. GRPO; `align.objective` swaps the clipped token ratio for GSPO's sequence ratio or CISPO's clipped
stop-gradient weight; Kimi k1.5 (arXiv:2501.12599) likewise drops the value model for relative rewards over samples,
and its length penalty is the `length_penalty` reward).

Sampling: a prompt's G completions decode as one batch of G copies of the prompt with the model's KV cache
(equal lengths, no padding). A step takes `align.prompts_per_step` = P prompts of one token length (the prompt
order is chunked by length), so all N = P * G sequences decode as one batch: P times fewer decoding steps, which
dominate on CPU. For the loss they are padded on the right (causal: padding never changes a real position) ->
inputs/labels (N, T); mask (N, T) marks completion tokens up to and including the first EOT.

`align.num_iterations` = mu optimizer steps reuse one batch of samples (TRL's buffered generations): pi_old's
log-probs are computed once, at sampling time; with mu = 1 pi_old = pi_theta, so old_logp = logp.detach()
(ratio 1, the gradient is the plain policy gradient).

The module implements train/module.py's stage contract, `prepare_batch` (the rollout) and `compute_loss`; the
step (finiteness checked on all ranks, bad steps skipped together, logging), Trainer, precision, gradient
clipping and accumulation and checkpoints are pretraining's (`train.run.fit`). Logged per step (means over
ranks): reward mean / std (within groups) and each reward, KL, clip fraction, completion length (tokens) and
policy entropy (nats/token).
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from align.losses import grpo_advantages, grpo_loss, token_logprobs
from align.policy import PolicyModel, align_config, start_policy
from align.rewards import group_rewards
from data.blocks import ResumableSampler
from data.corpus import DataError
from data.instruct import parse_header
from data.sft import instruct_examples
from data.tokenizer import eot_id, token_byte_lengths
from train.cli import run_cli
from train.config import Config, ConfigError
from train.estimate.memory import check_memory
from train.report import LOSS_PLOTS, Plot
from train.run import fit, make_run_dir


def length_chunks(lengths: list[int], size: int, seed: int) -> list[list[int]]:
    """Prompt indices grouped by token length into chunks of `size` (a length's remainder is left out), each
    chunk shuffled by `seed`: the P * G sequences of one chunk decode as one batch, with no padding."""
    rng, by_length = random.Random(seed), defaultdict(list)
    for i, n in enumerate(lengths):
        by_length[n].append(i)
    chunks = []
    for n in sorted(by_length):
        members = by_length[n]
        rng.shuffle(members)
        chunks += [members[k:k + size] for k in range(0, len(members) - size + 1, size)]
    return chunks


class PromptBatches(Sampler[list[int]]):
    """The chunk of prompts for each micro-batch: micro-batch a of optimizer step s gets draw
    d = (s // mu) * accum + a (each draw serves mu steps), chunk number d of data/blocks.py's seeded order.
    A pure function of (seed, step): a resumed run starts at its step without saved sampler state."""

    def __init__(self, chunks: list[list[int]], accum: int, iterations: int, seed: int, start_step: int,
                 max_steps: int, rank: int = 0, world_size: int = 1):
        self.chunks, self.accum, self.iterations, self.seed = chunks, accum, iterations, seed
        self.steps, self.rank, self.world_size = range(start_step, max_steps), rank, world_size

    def __len__(self) -> int:
        return len(self.steps) * self.accum

    def __iter__(self):
        for step in self.steps:
            for a in range(self.accum):
                draw = ((step // self.iterations) * self.accum + a) * self.world_size + self.rank
                (chunk,) = ResumableSampler(len(self.chunks), self.seed, draw, draw + 1)
                yield self.chunks[chunk]


class Prompts(Dataset):
    def __init__(self, ids: list[list[int]]):
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Tensor:
        return torch.tensor(self.ids[i], dtype=torch.long)


class PromptCollate:
    """P prompts -> ids (P, L_max) right-padded with `pad_id`, lengths (P,)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list[Tensor]) -> tuple[Tensor, Tensor]:
        ids = torch.full((len(items), max(len(x) for x in items)), self.pad_id, dtype=torch.long)
        for row, x in enumerate(items):
            ids[row, : len(x)] = x
        return ids, torch.tensor([len(x) for x in items])


class PromptDataModule(L.LightningDataModule):
    def __init__(self, tokenizer, prompts: list[str], seq_len: int, prompts_per_step: int, grad_accum: int,
                 num_iterations: int, max_steps: int, seed: int):
        super().__init__()
        encoded = [e.ids for e in tokenizer.encode_batch(prompts)]
        self.prompts = Prompts([ids for ids in encoded if len(ids) <= seq_len])
        self.chunks = length_chunks([len(ids) for ids in self.prompts.ids], prompts_per_step, seed)
        if not self.chunks:
            raise DataError(f"no {prompts_per_step} training prompts share a token length (of {len(self.prompts)} "
                            "prompts within data.seq_len); lower align.prompts_per_step or use more stories")
        self.collate = PromptCollate(eot_id(tokenizer))
        self.args = (grad_accum, num_iterations, seed)
        self.max_steps = max_steps

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        sampler = PromptBatches(self.chunks, *self.args, trainer.global_step, self.max_steps,
                                trainer.global_rank, trainer.world_size)
        return DataLoader(self.prompts, batch_sampler=sampler, collate_fn=self.collate)


@dataclass
class Rollout:
    """One batch of samples: N = P * G sequences (prompt + completion), as the loss needs them."""

    inputs: Tensor  # (N, T) token ids (EOT-padded)
    labels: Tensor  # (N, T) next tokens
    mask: Tensor  # (N, T) 1 on completion tokens (to the first EOT, inclusive)
    advantages: Tensor  # (N,)
    old_logp: Tensor | None  # (N, T) pi_old at sampling time; None when num_iterations == 1
    ref_logp: Tensor | None  # (N, T) pi_ref; None when beta == 0
    stats: dict[str, float]  # reward statistics of the batch


class GRPOModel(PolicyModel):
    """Samples G completions per prompt (prepare_batch), scores them and takes clipped policy-gradient steps
    (compute_loss)."""

    progress_metric = "train/reward"

    def __init__(self, cfg: Config, tokenizer, model, lora_cfg=None):
        super().__init__(cfg, token_byte_lengths(tokenizer), model, lora_cfg)
        self.tokenizer, self.eot = tokenizer, eot_id(tokenizer)
        self.buffer: dict[int, Rollout] = {}  # micro-batch slot -> samples reused for num_iterations steps

    def uses_reference(self) -> bool:
        return bool(self.cfg.align.beta)  # the KL term is the only reader of pi_ref

    def plots(self) -> dict[str, Plot]:
        """loss.png, plus reward.png: the mean reward and each weighted reward, and kl.png (10-step means)."""
        rewards = ("train/reward", *(f"train/rewards/{name}" for name in self.cfg.align.rewards))
        return {**LOSS_PLOTS, "reward.png": ("reward (share in [0, 1])", rewards, 10),
                "kl.png": ("KL to the reference (nats/token)", ("train/kl",), 10)}

    def logprobs(self, model, inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """-> token log-probs (N, T) at the sampling temperature (as TRL), and the logits (N, T, V)."""
        logits, _ = model(inputs)  # (N, T, V)
        return token_logprobs(logits / max(self.cfg.align.temperature, 1e-6), labels), logits

    @torch.no_grad()
    def rollout(self, prompt_ids: Tensor, lengths: Tensor, slot: int) -> Rollout:
        """Sample and score (`sample`), then pi_old's and pi_ref's log-probs and the group-relative advantages."""
        a = self.cfg.align
        inputs, labels, mask, r, stats, sampled = self.sample(prompt_ids, lengths, slot)
        old = sampled if a.num_iterations > 1 else None  # pi_old: the distribution the tokens were drawn from
        ref = None
        if a.beta:
            with self.reference_model() as reference:
                ref = self.logprobs(reference, inputs, labels)[0]
        return Rollout(inputs, labels, mask, grpo_advantages(r, a.group_size, a.scale, baseline=a.baseline), old, ref,
                       stats)

    @torch.no_grad()
    def sample(self, prompt_ids: Tensor, lengths: Tensor, slot: int
               ) -> tuple[Tensor, Tensor, Tensor, Tensor, dict, Tensor]:
        """G completions of each of the P prompts, decoded as one batch, and their rewards -> inputs, labels and
        mask (N, T), rewards (N,), reward statistics, and the log-probs (N, T) each label had when it was sampled
        (log_softmax(logits / temperature) with the KV cache; equal to the training forward's within 1e-5 in fp32,
        tests/model/test_logprob_parity.py; 0 on prompt positions)."""
        a, t, G = self.cfg.align, self.cfg.train, self.cfg.align.group_size
        seed = t.seed * 1_000_003 + (self.global_step * self.trainer.world_size + self.global_rank) * 97 + slot
        generator = torch.Generator(device=self.device).manual_seed(seed)
        was_training = self.model.training
        self.model.eval()
        n = int(lengths[0])  # a chunk's prompts share one token length (length_chunks): one batch, no padding
        if not bool((lengths == n).all()):
            raise ValueError(f"GRPO rollout needs prompts of one length, got {lengths.tolist()}")
        prompts = prompt_ids[:, :n].tolist()
        infos = [parse_header(self.tokenizer.decode(ids)) for ids in prompts]
        idx = prompt_ids[:, :n].repeat_interleave(G, dim=0)  # (P * G, n): G copies per prompt
        out, drawn = self.model.generate(idx, a.max_new_tokens, temperature=a.temperature, eos_id=self.eot,
                                         generator=generator, return_logprobs=True)  # (P * G, n + m), (P * G, m)
        sequences, texts = [], []
        for i, completion in enumerate(out[:, n:].tolist()):
            end = completion.index(self.eot) + 1 if self.eot in completion else len(completion)
            texts.append(self.tokenizer.decode(completion[: end - (completion[end - 1] == self.eot)]))
            sequences.append(prompts[i // G] + completion[:end])
        scored = [s for p, info in enumerate(infos) for s in group_rewards(info, texts[p * G:(p + 1) * G], a.rewards)]
        rewards, parts = [total for total, _ in scored], [per for _, per in scored]
        self.model.train(was_training)
        full = torch.full((len(sequences), max(map(len, sequences))), self.eot, dtype=torch.long)  # (N, T + 1)
        mask = torch.zeros(full.shape[0], full.shape[1] - 1)  # (N, T)
        for i, seq in enumerate(sequences):
            full[i, : len(seq)] = torch.tensor(seq)
            mask[i, n - 1: len(seq) - 1] = 1  # labels[t] = seq[t + 1]: completion tokens from t = n - 1
        full, mask = full.to(self.device), mask.to(self.device)
        inputs, labels = full[:, :-1], full[:, 1:]  # (N, T) each
        sampled = F.pad(drawn.float(), (n - 1, 0))[:, : labels.shape[1]].to(self.device)  # label t = token n - 1 + j
        r = torch.tensor(rewards, device=self.device)  # (N,)
        stats = {"reward": r.mean().item(), "reward_std": r.view(-1, G).std(-1).mean().item(),
                 "completion_length": mask.sum(-1).mean().item()}
        stats.update({f"rewards/{k}": sum(p[k] for p in parts) / len(parts) for k in a.rewards})
        return inputs, labels, mask, r, stats, sampled

    def prepare_batch(self, batch, batch_idx: int) -> Rollout:
        """The step's samples: a fresh rollout every num_iterations steps, else the buffered one of this slot."""
        slot = batch_idx % self.cfg.train.grad_accum
        if self.global_step % self.cfg.align.num_iterations == 0 or slot not in self.buffer:
            self.buffer[slot] = self.rollout(*batch, slot)
        return self.buffer[slot]

    def compute_loss(self, r: Rollout) -> tuple[Tensor, dict]:
        a = self.cfg.align
        logp, logits = self.logprobs(self.model, r.inputs, r.labels)  # (N, T), (N, T, V)
        old = logp.detach() if r.old_logp is None else r.old_logp
        loss, stats = grpo_loss(logp, old, r.ref_logp, r.advantages, r.mask, a.beta, a.epsilon,
                                a.epsilon_high or None, a.level, a.objective)
        logs = {"loss": loss.detach(), "kl": stats["kl"], "clip_fraction": stats["clip_fraction"],
                "entropy": entropy(logits, r.mask), **r.stats}
        return loss, {f"train/{k}": v for k, v in logs.items()}


@torch.no_grad()
def entropy(logits: Tensor, mask: Tensor) -> Tensor:
    """Logits (N, T, V), mask (N, T) -> the policy's mean entropy over the completion tokens (nats/token)."""
    logq = torch.log_softmax(logits[mask.bool()].float(), -1)  # (completion tokens, V)
    return -(logq.exp() * logq).sum(-1).mean()


def train_grpo(cfg: Config, callbacks: list = (), stage: type[GRPOModel] = GRPOModel) -> Path:
    """GRPO (or `stage`, a GRPOModel subclass: align/ppo.py) from the SFT run cfg.finetune.base on prompts of the
    training stories; returns the run directory."""
    t, a = cfg.train, cfg.align
    if a.group_size < 2 or a.num_iterations < 1 or a.prompts_per_step < 1:
        raise ConfigError(f"align.group_size must be >= 2 (got {a.group_size}), align.num_iterations and "
                          f"align.prompts_per_step >= 1 (got {a.num_iterations}, {a.prompts_per_step})")
    # a step decodes and trains on prompts_per_step x group_size sequences of a prompt and its completion
    check_memory(cfg, training=True, frozen=cfg.finetune.method == "lora", batch=a.prompts_per_step * a.group_size,
                 tokens=cfg.data.seq_len + a.max_new_tokens)
    L.seed_everything(t.seed, workers=True, verbose=False)
    run_dir = make_run_dir(cfg)
    tokenizer, model, lora_cfg, run_files = start_policy(cfg, run_dir)
    examples = instruct_examples(cfg.data.path, t.seed, cfg.data.val_fraction, cfg.data.max_stories)["train"]
    datamodule = PromptDataModule(tokenizer, [ex.prompt for ex in examples], cfg.data.seq_len, a.prompts_per_step,
                                  t.grad_accum, a.num_iterations, t.max_steps, t.seed)
    module = stage(cfg, tokenizer, model, lora_cfg)
    trainer = fit(cfg, module, datamodule, run_dir, tokenizer, callbacks, monitor_val=False, run_files=run_files)
    if trainer.is_global_zero:
        logs = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        print(f"run: {run_dir}  " + "  ".join(f"{k}={v:.4f}" for k, v in sorted(logs.items()) if "/lr" not in k))
    return run_dir


def main(cfg: Config) -> None:
    train_grpo(cfg)


if __name__ == "__main__":
    run_cli(main, usage=__doc__, load=align_config)
