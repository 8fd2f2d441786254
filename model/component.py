"""The component contract: what a mixer, an FFN or a position declares about itself, and the registries that check it.

A registry entry is the only place that knows a component. Everything else (config validation, `train.estimate`,
`match: params`, initialisation, weight decay, LoRA targets, export) asks the registered class, so adding a
component is one file and one registry line. `Registry.__setitem__` refuses a class that leaves a required piece
undeclared, so a missing piece fails when the component is registered, not silently later.

A mixer (`Mixer`) declares:
    section             its config dataclass, nested under `model.<name>` (None: no options of its own); the
                        component reads it with `options(cfg)`, found by its type, so the file never spells the
                        name it is registered under
    replaces_ffn        True when it already is attention + FFN (GAU): `model.ffn=auto` then gives the block none
    width_knob          the field `match: params` resizes: one of its section (GAU: "hidden", the key
                        `model.gau.hidden`) or of the model (FFNs: "d_ff"); None if it has none (`width_key(cfg)`)
    lora_targets        Linear submodule names LoRA adapts by default (`finetune.lora.target_modules=auto`)
    residual_projections()   its Linears that write into the residual stream (init std / sqrt(2 L))
    no_decay_parameters()    parameters AdamW must not decay (SSM decay rates, skip scales)
    init_cache(B, device, dtype)   the empty decoding state; `forward(x, cache, offset)` continues it, `offset`
                        being the absolute position of x's first token (given by the model, never re-derived)
    flops_per_token(cfg, T)        training FLOPs per token (forward + backward) NOT counted by 6 N: attention
                        scores, scans, state updates (PaLM appendix B counts 6 N for the parameter matmuls)
    activation_bytes(cfg, T, s)    bytes per token kept for backward by the mixer, s = compute dtype bytes, its
                        input included (the norm's output its projections read); `train.estimate` adds the norms
    cache_bytes(cfg, T, s)         bytes of one sequence's decoding state in one layer after T tokens (what
                        `forward` returns as its cache), s = bytes per value of the model dtype (states the mixer
                        keeps in fp32 count 4): a cache that grows per token (attention's keys and values, MLA's
                        latent) or a fixed state (a recurrence's). The default is softmax attention's K and V,
                        2 n_kv_heads head_dim values per token; a mixer keeping anything else declares its own
                        (in `OWN`: a subclass of a mixer that does must too). `train.estimate` reads it
An FFN (`FFN`) declares section, width_knob, lora_targets, residual_projections(), no_decay_parameters(),
`hidden_width(cfg)`, `inactive_params` (parameters a token skips, MoE) and activation_bytes(cfg, s, mixed).
Every component may also react to the training loop (no-ops by default; `Transformer.notify` calls them, from
train/module.py): `micro_batch_start()` before a training micro-batch's forward, `micro_batch_end()` after its loss
(before backward), `optimizer_step_end()` after the optimizer step, `step_skipped()` when a bad step is dropped
(MoE's routing-bias balancing counts loads and updates its bias through them). What a run logs about a component
(MoE's expert shares) is decided on the training side (train/callbacks/components.py): a component names nothing
above model/.
A mixer also declares `position_hooks`, the hooks of the model's position it applies (below); `build(cfg, position,
layer_idx)` is how the Block makes it (the default ignores the layer index; a mixer whose init depends on its depth
overrides it).
A position (`Position`, model/positions/) declares `contributes`, the hooks it overrides, among `HOOKS`:
    embed(h, offset)           added by the model to the token embeddings h (B, T, D) (sinusoidal, learned)
    rotate(q, k, offset)       applied by a mixer to q (B, H, T, d) and k (B, Hk, T, d) (RoPE)
    score_bias(n_heads, q_pos, k_pos, dtype)   added by a mixer to its attention scores: (..., n_heads, T_q, T_k) for
                               queries and keys at absolute positions q_pos (..., T_q) and k_pos (..., T_k) (ALiBi, T5)
and `build(cfg)`, the position of a model config. A mixer applies the hooks in its `position_hooks`; the model
applies `embed`. A position whose score bias a layer's mixer does not apply is refused when the config is read
(`check_position`); a position contributing only what a mixer does not apply leaves that mixer position-free (mamba
ignores RoPE: its recurrence orders the tokens), which `position_free` says.
Declarations in `OWN` (export names, the position hooks a forward applies) are not silently inherited: a subclass
whose base declares a value other than the contract's default must declare its own (`declares`), since it may
compute otherwise (a subclass of softmax attention is not Llama's attention).
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from model.options import Sectioned, section_name


class Component(nn.Module, Sectioned):
    """What every mixer and FFN declares; `REQUIRED` names the pieces a subclass must define itself."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("lora_targets", "residual_projections", "activation_bytes")
    width_knob: ClassVar[str | None] = None  # field of its section, else of the model, resized by `match: params`
    lora_targets: ClassVar[tuple[str, ...]] = ()  # Linear names adapted by default
    llama_module: ClassVar[str | None] = None  # its name in a Hugging Face Llama layer, when it is Llama's own
    OWN: ClassVar[tuple[str, ...]] = ("llama_module",)  # a non-default value must be the class's own (declares)

    @classmethod
    def width_key(cls, cfg) -> str | None:
        """`width_knob` as a dotted key under `model.`: `<its section's name>.<knob>` when its section has that
        field (`gau.hidden`, whatever name GAU is registered under), else the model's own field (`d_ff`)."""
        if cls.width_knob is None:
            return None
        if cls.section is not None and cls.width_knob in cls.section.__dataclass_fields__:
            return f"{section_name(cfg, cls.section)}.{cls.width_knob}"
        return cls.width_knob

    def residual_projections(self) -> list[nn.Linear]:
        """The Linears whose output is added to the residual stream: initialised with std / sqrt(2 L)."""
        raise NotImplementedError

    def no_decay_parameters(self) -> list[nn.Parameter]:
        """Parameters excluded from weight decay beyond the rule for all (vectors and embeddings)."""
        return []

    @staticmethod
    def check_config(cfg) -> None:
        """Cross-field checks of a model config using this component (raise ValueError naming the key without
        the `model.` prefix); `ModelConfig.check` calls it for every component a layer uses."""

    EVENTS: ClassVar[tuple[str, ...]] = ("micro_batch_start", "micro_batch_end", "optimizer_step_end", "step_skipped")

    def micro_batch_start(self) -> None:
        """Before a training micro-batch's forward."""

    def micro_batch_end(self) -> None:
        """After a training micro-batch's loss, before its backward."""

    def optimizer_step_end(self) -> None:
        """After the optimizer step (identically on every rank: collectives are allowed)."""

    def step_skipped(self) -> None:
        """The step's gradients were dropped (a non-finite loss): forget what it collected."""


class Mixer(Component):
    REQUIRED = (*Component.REQUIRED, "init_cache", "forward", "flops_per_token")
    OWN = (*Component.OWN, "position_hooks", "cache_bytes")
    replaces_ffn: ClassVar[bool] = False
    position_hooks: ClassVar[tuple[str, ...]] = ("rotate",)  # the position's hooks it applies (rotate, score_bias)

    @classmethod
    def build(cls, cfg, position, layer_idx: int = 0) -> Mixer:
        """The mixer of layer `layer_idx` (0-based) of a model of config `cfg`, applying `position`'s hooks."""
        return cls(cfg, position)

    def init_cache(self, batch_size: int, device, dtype):
        raise NotImplementedError

    def forward(self, x: Tensor, cache=None, offset: int = 0):
        raise NotImplementedError

    @staticmethod
    def flops_per_token(cfg, seq_len: int) -> float:
        raise NotImplementedError

    @staticmethod
    def activation_bytes(cfg, seq_len: int, s: int) -> float:
        raise NotImplementedError

    @staticmethod
    def cache_bytes(cfg, seq_len: int, s: int) -> float:
        """Softmax attention's cache (model/mixers/softmax.py): keys and values, (n_kv_heads, head_dim) per token."""
        return s * 2 * cfg.kv_heads * cfg.head_dim * seq_len


class FFN(Component):
    REQUIRED = (*Component.REQUIRED, "forward", "hidden_width")
    inactive_params: int = 0  # parameters a token does not pass through (MoE's unrouted experts), for FLOPs

    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    @staticmethod
    def hidden_width(cfg) -> int:
        raise NotImplementedError

    @staticmethod
    def activation_bytes(cfg, s: int, mixed: bool) -> float:
        raise NotImplementedError


HOOKS = ("embed", "rotate", "score_bias")  # what a position may contribute (module docstring)


class Position(nn.Module, Sectioned):
    """What a position declares; every hook is the identity (no bias) unless the class contributes it."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("contributes",)
    OWN: ClassVar[tuple[str, ...]] = ("llama_module",)
    contributes: ClassVar[tuple[str, ...]] = ()  # the hooks it overrides, among HOOKS
    llama_module: ClassVar[str | None] = None  # Hugging Face Llama's own position (RoPE) declares its name there
    max_positions: int | None = None  # the largest position it can place (a learned table's size); None: any

    @classmethod
    def build(cls, cfg) -> Position:
        """The position of a model of config `cfg` (its n_heads, d_model, section)."""
        return cls()

    @staticmethod
    def check_config(cfg) -> None:
        """Cross-field checks of a model config using this position (ValueError naming the key)."""

    def embed(self, h: Tensor, offset: int = 0) -> Tensor:
        return h

    def rotate(self, q: Tensor, k: Tensor, offset: int = 0) -> tuple[Tensor, Tensor]:
        return q, k

    def score_bias(self, n_heads: int, q_pos: Tensor, k_pos: Tensor, dtype) -> Tensor | None:
        return None


def position_contract(entry) -> None:
    """`declares(Position, entry)`, and its `contributes` names exactly the hooks it overrides."""
    declares(Position, entry)
    overridden = {hook for hook in HOOKS if getattr(entry, hook) is not getattr(Position, hook)}
    if overridden != set(entry.contributes):
        raise TypeError(f"{entry.__name__} contributes {tuple(entry.contributes)} but overrides "
                        f"{tuple(sorted(overridden))}; contributes names the hooks it overrides, among {HOOKS}")


class PositionHooks:
    """The hooks a mixer applies of the model's one position module, bound to it. A plain object, not a module: a
    mixer keeping it (`self.position`) does not register the position's parameters (T5's bias table, a learned table)
    once more per layer, so the state dict, parameter counts and sharding hold them once, under `position.`."""

    def __init__(self, position: Position):
        self.contributes, self.rotate, self.score_bias = position.contributes, position.rotate, position.score_bias


def check_position(name: str, position: type, layers: dict[str, type], mixers: dict[str, type]) -> None:
    """ValueError (one line) when a position contributes a score bias that a layer's mixer (`layers`: name -> class,
    every mixer the layers use) does not apply: that layer would see no position at all. `mixers`: the registry."""
    if "score_bias" not in position.contributes:
        return
    for mixer, cls in layers.items():
        if "score_bias" not in cls.position_hooks:
            takers = ", ".join(m for m, c in mixers.items() if "score_bias" in c.position_hooks)
            raise ValueError(f"position={name} biases attention scores, which mixer {mixer} does not apply; use a "
                             f"mixer that applies a score bias ({takers}) or another position")


def position_free(position: type, mixer: type) -> bool:
    """Whether `mixer` ignores everything `position` contributes (the model applies `embed`; the mixer its
    `position_hooks`): a model of that mixer computes the same with this position as with none."""
    return not set(position.contributes) & {"embed", *mixer.position_hooks}


def declares(base: type, entry) -> None:
    """The class contract: `entry` subclasses `base`, defines each of `base.REQUIRED` itself (in its own classes,
    not inherited from `base`), declares in its own body each of `base.OWN` whose value is not `base`'s, and its
    `section`, if any, is a dataclass. TypeError naming what is missing."""
    if not (isinstance(entry, type) and issubclass(entry, base)):
        raise TypeError(f"{entry!r} must subclass {base.__name__}")
    own = [k for k in entry.__mro__ if issubclass(k, base) and k is not base]  # the entry's own classes
    missing = [piece for piece in getattr(base, "REQUIRED", ()) if not any(piece in k.__dict__ for k in own)]
    if missing:
        raise TypeError(f"{entry.__name__} does not declare {', '.join(missing)}; see {base.__module__} for the "
                        f"contract")
    for piece in getattr(base, "OWN", ()):
        value = getattr(entry, piece)
        if value != getattr(base, piece) and piece not in entry.__dict__:
            origin = next(k for k in entry.__mro__ if piece in k.__dict__).__name__
            raise TypeError(f"{entry.__name__} inherits {piece}={value!r} from {origin}; declare {piece} in "
                            f"{entry.__name__} itself (what its own code does)")
    section = getattr(entry, "section", None)
    if section is not None and not hasattr(section, "__dataclass_fields__"):
        raise TypeError(f"section must be a dataclass, got {section!r}")


class Registry(dict):
    """name -> entry of one family, each checked on insertion against the family's contract, so a broken entry
    fails at its registry line. `contract` is a class (entries are subclasses declaring its pieces: `declares`) or
    a function `contract(entry)` raising TypeError that says what the entry lacks (align/losses.py, align/rewards.py).
    """

    def __init__(self, family: str, contract, entries: dict):
        super().__init__()
        self.family, self.contract = family, contract
        self.update(entries)

    def __setitem__(self, name: str, entry) -> None:
        try:
            declares(self.contract, entry) if isinstance(self.contract, type) else self.contract(entry)
        except TypeError as err:
            raise TypeError(f"{self.family} {name!r}: {err}") from None
        super().__setitem__(name, entry)

    def update(self, *entries, **named) -> None:
        """dict.update, each entry checked as `registry[name] = entry` is."""
        for name, entry in dict(*entries, **named).items():
            self[name] = entry
