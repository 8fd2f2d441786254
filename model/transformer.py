"""Decoder-only transformer assembled from registries (`model.position`, `model.mixer`, `model.ffn`).

    h_0 = position.embed(E[idx]);  h_l = Block_l(h_{l-1});  logits = norm(h_L) W_E^T  (tied head)

Shapes: idx (B, T) int64 -> logits (B, T, V). Decoding passes a `DecodeState` (the absolute offset and
each layer's mixer cache) and gets it back updated, so T can be a prompt (prefill) or a single token.
Initialisation (GPT-2 / Llama): N(0, init_std) for weights, the residual projections each component declares
(`residual_projections()`, model/component.py) scaled by 1/sqrt(2 L); components with special parameters (SSM
decay, scales) re-initialise them in `reset_special_parameters()`.

`forward(idx, head=False)` returns the final-normed hidden states (B, T, D) instead of the logits, for a loss that
applies the head itself (train/loss.py's chunked cross-entropy). Activation checkpointing (`model.checkpoint_blocks`:
true = every block, k = every k-th block, blocks 0, k, 2k, ...; false / 0 = off) keeps only a checkpointed block's
input for backward and recomputes the block there (`torch.utils.checkpoint`, non-reentrant, RNG state restored so
dropout repeats): in training with gradients and no decoding state only; values and gradients are unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from model.block import Block
from model.component import Component, PositionHooks
from model.config import ModelConfig
from model.generate import generate
from model.norm import RMSNorm
from model.positions import POSITIONS


@dataclass
class DecodeState:
    offset: int = 0  # tokens already consumed (absolute position of the next one)
    layers: list = field(default_factory=list)  # one mixer cache per layer


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.vocab_size > 0, "model.vocab_size must be resolved before building the model"
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.position = POSITIONS[cfg.position].build(cfg)  # the one owner of its parameters (T5, learned)
        hooks = PositionHooks(self.position)  # what each mixer applies of it, without owning it
        self.layers = nn.ModuleList(
            Block(cfg, mixer, cfg.layer_ffn(mixer), hooks, i) for i, mixer in enumerate(cfg.layer_mixers())
        )
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        residual_std = self.cfg.init_std / math.sqrt(2 * self.cfg.n_layers)
        residual = {id(p) for c in self.components() for p in c.residual_projections()}
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                std = residual_std if id(module) in residual else self.cfg.init_std
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        for module in self.modules():
            if hasattr(module, "reset_special_parameters"):
                module.reset_special_parameters()

    def components(self) -> list[nn.Module]:
        """Every registered component of every layer (mixers and FFNs), in layer order."""
        return [c for layer in self.layers for c in layer.components()]

    def no_decay_parameters(self) -> list[nn.Parameter]:
        """Parameters the components exclude from weight decay (beyond vectors and embeddings)."""
        return [p for c in self.components() for p in c.no_decay_parameters()]

    def notify(self, event: str) -> None:
        """Tell every component about a training-loop event (model/component.py `Component.EVENTS`); only the
        components overriding it are called (found once per event)."""
        listeners = self.__dict__.setdefault("_listeners", {})
        if event not in listeners:
            base = getattr(Component, event)
            listeners[event] = [c for c in self.components() if getattr(type(c), event) is not base]
        for component in listeners[event]:
            getattr(component, event)()

    def lora_targets(self) -> list[str]:
        """The default LoRA target names: the union of every component's `lora_targets`, in first-seen order."""
        return list(dict.fromkeys(name for c in self.components() for name in c.lora_targets))

    def init_state(self, batch_size: int, device=None, dtype=None) -> DecodeState:
        device = device or self.embed_tokens.weight.device
        dtype = dtype or self.embed_tokens.weight.dtype
        return DecodeState(0, [layer.mixer.init_cache(batch_size, device, dtype) for layer in self.layers])

    def checkpointed(self, i: int) -> bool:
        """Whether block i is recomputed in backward (`model.checkpoint_blocks`)."""
        every = int(self.cfg.checkpoint_blocks)  # True = 1, False = 0
        return every > 0 and i % every == 0

    def forward(self, idx: Tensor, state: DecodeState | None = None, head: bool = True
                ) -> tuple[Tensor, DecodeState | None]:
        offset = 0 if state is None else state.offset
        h = self.position.embed(self.embed_tokens(idx), offset)  # (B, T, D)
        caches = [None] * len(self.layers) if state is None else state.layers
        recompute = self.training and state is None and torch.is_grad_enabled()
        new_caches = []
        for i, (layer, cache) in enumerate(zip(self.layers, caches)):
            if recompute and self.checkpointed(i):
                h, cache = checkpoint(layer, h, None, offset, use_reentrant=False)
            else:
                h, cache = layer(h, cache, offset)
            new_caches.append(cache)
        out = self.norm(h)  # (B, T, D)
        if head:
            out = self.lm_head(out)  # (B, T, V) logits
        if state is None:
            return out, None
        return out, DecodeState(offset + idx.shape[1], new_caches)

    def aux_loss(self) -> Tensor | float:
        """Sum of auxiliary losses left by the last forward (MoE load balancing + z-loss); 0 if none."""
        losses = [m.aux_loss for m in self.modules() if isinstance(getattr(m, "aux_loss", None), Tensor)]
        return sum(losses) if losses else 0.0

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed_tokens.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6 N + 12 L_attn D T.

        N counts the parameters a token actually passes through: the output head once, and for MoE only
        the experts it is routed to (FFNs report unused ones in `inactive_params`); every mixer adds what 6 N
        does not count (attention scores, scans: `Mixer.flops_per_token`)."""
        n = self.num_params(non_embedding=True)
        if self.cfg.tie_embeddings:
            n += self.lm_head.weight.numel()
        n -= sum(getattr(c, "inactive_params", 0) for c in self.components())
        return 6 * n + sum(type(layer.mixer).flops_per_token(self.cfg, seq_len) for layer in self.layers)

    def generate(self, idx: Tensor, max_new_tokens: int, **sampling) -> Tensor:
        return generate(self, idx, max_new_tokens, **sampling)
