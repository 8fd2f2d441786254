"""Model configuration: the fields every model has, plus one section per component that declares one.

Every choice is a name looked up in a registry (`model/mixers`, `model/ffn`, `model/positions`), so the config
stays plain data that serialises to YAML. A component's own options live in its own file (`section = MambaConfig`
in model/mixers/mamba.py) and appear here as `model.<registry name>` because `ModelConfig` is composed from the
registries at import: adding a component never edits this file. `train/config.py` nests this tree under `model:`.

Fields carry their valid values in `option(...)` metadata (choices, ranges, model/options.py), checked when the
object is built, so a choice is spelled once, where the field is. Component files import nothing from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from model.component import check_position
from model.ffn import DEFAULT_FFN, FFNS
from model.mixers import MIXERS
from model.options import Options, compose, option
from model.positions import POSITIONS


def mixer_names():
    return list(MIXERS)


def ffn_names():
    return ["auto", "none", *FFNS]


def position_names():
    return list(POSITIONS)


@dataclass
class CoreModelConfig(Options):
    vocab_size: int = option(0, min=0)  # 0 = follow the tokenizer (data.vocab_size)
    d_model: int = option(256, min=1)  # residual stream width
    n_layers: int = option(4, min=1)
    n_heads: int = option(4, min=1)  # query heads of attention-like mixers
    n_kv_heads: int = option(0, min=0)  # key/value heads (grouped-query attention); 0 = n_heads
    d_ff: int = option(0, min=0)  # FFN hidden width; 0 = the FFN's own default (4d gelu, 8/3 d swiglu)
    max_seq_len: int = option(0, min=0)  # longest sequence for positions; 0 = follow data.seq_len
    position: str = option("rope", choices=position_names)  # rope | sinusoidal | learned | alibi | t5 | none
    rope_theta: float = option(10000.0, min=1.0)  # RoPE base (and the sinusoidal one)
    mixer: str | list[str] = option("softmax", choices=mixer_names)  # a mixer, or a list repeated over layers
    ffn: str = option("auto", choices=ffn_names)  # an FFN or none; auto = swiglu, or none after a mixer that is one
    norm_eps: float = option(1e-5, min=0.0)  # RMSNorm epsilon
    tie_embeddings: bool = True  # output head shares the token embedding (saves V*d parameters)
    dropout: float = option(0.0, min=0.0, below=1.0)  # residual dropout; 0 for short pretraining runs
    init_std: float = option(0.02, min=0.0)  # normal init; residual projections get init_std / sqrt(2 * n_layers)
    # activation checkpointing: true = every block, k = every k-th
    checkpoint_blocks: bool | int = option(False, min=0, runtime=True)

    def check(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        for component in self.components():
            component.check_config(self)
        POSITIONS[self.position].check_config(self)
        check_position(self.position, POSITIONS[self.position], {m: MIXERS[m] for m in self.layer_counts()}, MIXERS)

    def components(self) -> list[type]:
        """The mixer and FFN classes the layers use, each once, in layer order."""
        mixers = list(self.layer_counts())
        ffns = [f for f in dict.fromkeys(self.layer_ffn(m) for m in mixers) if f != "none"]
        return [*(MIXERS[m] for m in mixers), *(FFNS[f] for f in ffns)]

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    def layer_mixers(self) -> list[str]:
        """The mixer of every layer: a list is repeated over the layers (`[mamba, softmax]` x 2 for L=4)."""
        names = [self.mixer] if isinstance(self.mixer, str) else list(self.mixer)
        return [names[i % len(names)] for i in range(self.n_layers)]

    def layer_counts(self) -> dict[str, int]:
        """mixer -> how many layers use it, in first-layer order; computed from the repeating list, without a list of
        n_layers entries (a config saying n_layers=10**9 is refused by its memory estimate, not by building one)."""
        names = [self.mixer] if isinstance(self.mixer, str) else list(self.mixer)
        names = names[: self.n_layers]
        counts: dict[str, int] = {}
        for i, name in enumerate(names):
            counts[name] = counts.get(name, 0) + self.n_layers // len(names) + (i < self.n_layers % len(names))
        return counts

    def layer_ffn(self, mixer: str) -> str:
        """The FFN that follows `mixer`: `auto` gives none after a mixer that replaces the FFN (GAU)."""
        if self.ffn != "auto":
            return self.ffn
        return "none" if MIXERS[mixer].replaces_ffn else DEFAULT_FFN

    def ffn_hidden(self, kind: str) -> int:
        """Hidden width of FFN `kind` (its own default unless model.d_ff is set)."""
        return FFNS[kind].hidden_width(self)


ModelConfig = compose(CoreModelConfig, [MIXERS, FFNS, POSITIONS], "ModelConfig", __name__)
