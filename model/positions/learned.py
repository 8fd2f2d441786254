"""Learned absolute position embeddings (`model.position=learned`).

Radford et al. 2018, "Improving Language Understanding by Generative Pre-Training" (GPT, §4.1: "learned position
embeddings instead of the sinusoidal version"), as in GPT-2: a table P of max_positions rows, added to the tokens,

    h_0 = E[idx] + P[offset .. offset + T - 1]         (B, T, D) + (T, D)

P is an nn.Embedding (init N(0, init_std) like E, not weight-decayed). A table has a largest position: its rows are
`model.learned.max_positions`, by default model.max_seq_len (data.seq_len, the training length), else 2048. The
position declares it (`max_positions`), so generation stops there (model/generate.py), and `embed` refuses positions
past the table rather than index out of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from model.component import Position
from model.options import Options, option

DEFAULT_MAX_POSITIONS = 2048  # rows when neither the section nor model.max_seq_len says (GPT-2 has 1024)


@dataclass
class LearnedConfig(Options):
    max_positions: int = option(0, min=0)  # table rows (the context); 0 = model.max_seq_len, else 2048


class LearnedPosition(Position):
    contributes = ("embed",)
    section = LearnedConfig

    def __init__(self, d_model: int, max_positions: int):
        super().__init__()
        self.max_positions = max_positions
        self.table = nn.Embedding(max_positions, d_model)  # P (max_positions, D)

    @classmethod
    def build(cls, cfg) -> LearnedPosition:
        cls.check_config(cfg)
        return cls(cfg.d_model, cls.options(cfg).max_positions or cfg.max_seq_len or DEFAULT_MAX_POSITIONS)

    @staticmethod
    def check_config(cfg) -> None:
        rows = LearnedPosition.options(cfg).max_positions
        if rows and cfg.max_seq_len > rows:
            raise ValueError(f"learned.max_positions={rows} is below max_seq_len={cfg.max_seq_len}: training "
                             "sequences would run past the table")

    def embed(self, h: Tensor, offset: int = 0) -> Tensor:
        T = h.shape[-2]
        if offset + T > self.max_positions:
            raise ValueError(f"position {offset + T - 1} is past the learned table's {self.max_positions} rows "
                             "(model.learned.max_positions)")
        return h + self.table(torch.arange(offset, offset + T, device=h.device)).to(h.dtype)  # (B, T, D) + (T, D)
