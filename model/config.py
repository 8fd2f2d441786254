"""Model configuration: one dataclass per swappable family, nested under `ModelConfig`.

Every choice is a name looked up in a registry (`model/mixers`, `model/ffn`, `model/positions.py`), so
the config stays plain data that serialises to YAML. `train/config.py` nests this tree under `model:`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class MoEConfig:
    num_experts: int = 4  # experts per MoE layer
    top_k: int = 2  # experts each token is routed to (1 = Switch, 2 = GShard/Mixtral)
    aux_loss_coef: float = 0.01  # Switch load-balancing loss weight
    z_loss_coef: float = 0.001  # router z-loss weight (ST-MoE); keeps router logits small
    shared_expert: bool = False  # one always-on expert beside the routed ones (DeepSeekMoE)
    expert: str = "swiglu"  # activation of each expert FFN: swiglu | gelu


@dataclass
class LinearAttentionConfig:
    feature_map: str = "elu"  # phi: elu (elu+1, Katharopoulos) | relu | identity
    normalize: bool = True  # divide by phi(q) . sum phi(k); False = normalisation-free form
    chunk_size: int = 64  # quadratic inside a chunk, running K^T V state across chunks
    backend: str = "torch"  # torch (reference) | fla (Triton kernels, GPU only, if installed)


@dataclass
class GAUConfig:
    expansion: int = 2  # e = expansion * d_model for U and V
    hidden: int = 0  # e itself when > 0 (overrides expansion): any width, e.g. to match parameter counts
    qk_dim: int = 128  # s: the shared small Z that becomes Q and K
    scores: str = "relu2"  # relu2 (relu(qk/sqrt(s))^2 / n, the paper's) | softmax
    form: str = "quadratic"  # quadratic (FLASH-Quad) | chunked (FLASH, linear in length)
    chunk_size: int = 64  # chunk length of the chunked form


@dataclass
class MambaConfig:
    d_state: int = 16  # N: SSM state size per channel
    d_conv: int = 4  # causal depthwise conv width
    expand: int = 2  # inner width = expand * d_model
    d_inner: int = 0  # inner width itself when > 0 (overrides expand), e.g. to match parameter counts
    dt_rank: int = 0  # rank of the delta projection; 0 = ceil(d_model / 16)
    chunk_size: int = 64  # chunk length of the parallel scan
    backend: str = "torch"  # torch (reference) | mamba_ssm (CUDA kernels, if installed)


@dataclass
class ModelConfig:
    vocab_size: int = 0  # 0 = follow the tokenizer (data.vocab_size)
    d_model: int = 256  # residual stream width
    n_layers: int = 4
    n_heads: int = 4  # query heads of softmax/linear attention
    n_kv_heads: int = 0  # key/value heads (grouped-query attention); 0 = n_heads
    d_ff: int = 0  # FFN hidden width; 0 = 4*d for gelu, 8/3*d rounded up to 32 for swiglu
    max_seq_len: int = 0  # longest sequence for positions; 0 = follow data.seq_len
    position: str = "rope"  # rope | sinusoidal | none
    rope_theta: float = 10000.0  # RoPE base
    mixer: str | list[str] = "softmax"  # softmax | linear | gau | mamba, or a list repeated over layers
    ffn: str = "auto"  # swiglu | gelu | moe | none; auto = swiglu, or none after a gau mixer
    norm_eps: float = 1e-5  # RMSNorm epsilon
    tie_embeddings: bool = True  # output head shares the token embedding (saves V*d parameters)
    dropout: float = 0.0  # residual dropout; 0 for short pretraining runs
    init_std: float = 0.02  # normal init; residual projections get init_std / sqrt(2 * n_layers)
    moe: MoEConfig = field(default_factory=MoEConfig)
    linear: LinearAttentionConfig = field(default_factory=LinearAttentionConfig)
    gau: GAUConfig = field(default_factory=GAUConfig)
    mamba: MambaConfig = field(default_factory=MambaConfig)

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

    def layer_ffn(self, mixer: str) -> str:
        """The FFN that follows `mixer`: GAU replaces attention + FFN, so `auto` gives it none."""
        if self.ffn != "auto":
            return self.ffn
        return "none" if mixer == "gau" else "swiglu"

    def ffn_hidden(self, kind: str) -> int:
        """Hidden width of a dense FFN: 4d for gelu, 2/3 of that for swiglu (same params), rounded to 32."""
        if self.d_ff:
            return self.d_ff
        if kind == "gelu":
            return 4 * self.d_model
        hidden = int(2 * 4 * self.d_model / 3)
        return 32 * ((hidden + 31) // 32)
