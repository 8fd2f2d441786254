"""Positions: ALiBi slopes and T5 buckets against the papers' values computed by hand; every position x every mixer
from the registries either builds and changes the output (or is declared position-free and does not) or is refused in
one line; cached decoding with score biases; a score-bias position defined HERE, registered with one line; the
contract's own-declaration rule (llama_module, position_hooks); the layer index a mixer is built with; a position's
parameters held once and kept by a run directory; the learned table's context; the activation estimate with a score
bias; HF export refusing non-RoPE."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_decodes_like_full_forward, saved_activation_bytes, tiny_model_config, tiny_train_overrides
from torch import Tensor

from model.component import Position, check_position, position_free
from model.config import ModelConfig
from model.generate import context_room
from model.mixers import MIXERS
from model.mixers.gau import GAUConfig
from model.mixers.sliding import SlidingConfig
from model.mixers.softmax import SoftmaxAttention
from model.positions import POSITIONS, ALiBi, LearnedPosition, RotaryPosition, T5Bias
from model.positions.learned import LearnedConfig
from model.positions.t5 import T5Config
from model.transformer import Transformer
from train.config import load_config
from train.estimate.breakdown import head_bytes, layer_bytes
from train.generate.command import main as generate_main
from train.interop.export_hf import check_llama
from train.run import pretrain
from train.rundir.weights import read_shapes


def test_alibi_slopes_are_the_papers():
    """8 heads: the geometric sequence from 2^(-8/8) with that ratio. 6 heads: the 4-head slopes 2^(-8h/4) then the
    odd-indexed 8-head slopes 2^(-1), 2^(-3)."""
    assert ALiBi.slopes(8) == [1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256]
    assert ALiBi.slopes(6) == [1 / 4, 1 / 16, 1 / 64, 1 / 256, 1 / 2, 1 / 8]
    assert ALiBi.slopes(1) == [1 / 256]
    bias = ALiBi().score_bias(6, torch.tensor([5]), torch.arange(6), torch.float32)  # query 5 over keys 0..5
    expected = torch.tensor([[-m * (5 - j) for j in range(6)] for m in ALiBi.slopes(6)])[:, None]  # (H, 1, 6)
    torch.testing.assert_close(bias, expected)


def test_t5_buckets_by_hand():
    """N = 32, M = 128, causal: 16 exact buckets, then 16 + floor(log(n / 16) / log(8) * 16) up to 31; e.g. n = 18:
    16 log(1.125) / log(8) = 0.906 -> 16; n = 19: 1.322 -> 17; n = 32: 16 / 3 -> 21; n = 64: 32 / 3 -> 26."""
    t5 = T5Bias(n_heads=2)
    by_hand = {0: 0, 1: 1, 15: 15, 16: 16, 18: 16, 19: 17, 32: 21, 64: 26, 127: 31, 128: 31, 10_000: 31, -3: 0}
    n = torch.tensor(list(by_hand))
    assert t5.bucket(n).tolist() == list(by_hand.values())
    q, k = torch.tensor([40]), torch.tensor([0, 21, 39, 40])  # distances 40, 19, 1, 0
    bias = t5.score_bias(2, q, k, torch.float32)  # (H, 1, 4)
    torch.testing.assert_close(bias[:, 0], t5.bias.weight[[t5.bucket(torch.tensor(40)).item(), 17, 1, 0]].T)
    assert t5.score_bias(1, q, k, torch.float32).shape == (1, 1, 4)  # a one-head mixer (GAU) reads head 0
    with pytest.raises(ValueError, match="max_distance=16 must exceed num_buckets / 2 = 16"):
        T5Config(num_buckets=32, max_distance=16)


def pair_config(position: str, mixer: str, **extra) -> dict:
    """One layer; weights at std 0.3, so that every mixer's scores, not only its value path, move the output."""
    return dict(vocab_size=50, d_model=32, n_layers=1, n_heads=4, max_seq_len=32, position=position, mixer=mixer,
                ffn="none", init_std=0.3, **extra)


@pytest.mark.parametrize("position", [p for p in POSITIONS if p != "none"])
@pytest.mark.parametrize("mixer", list(MIXERS))
def test_every_position_with_every_mixer(position, mixer):
    """Refused in one line when the mixer does not apply the position's score bias; otherwise, with the same weights,
    the output differs from `none`'s, except for a pair the declarations make position-free, whose output is equal."""
    refused = "score_bias" in POSITIONS[position].contributes and "score_bias" not in MIXERS[mixer].position_hooks
    if refused:
        with pytest.raises(ValueError) as err:
            ModelConfig(**pair_config(position, mixer))
        assert "\n" not in str(err.value) and f"position={position}" in str(err.value) and mixer in str(err.value)
        return
    torch.manual_seed(0)
    reference = Transformer(ModelConfig(**pair_config("none", mixer))).eval()
    model = Transformer(ModelConfig(**pair_config(position, mixer))).eval()
    missing, unexpected = model.load_state_dict(reference.state_dict(), strict=False)
    assert not unexpected and all(key.startswith("position.") for key in missing)
    with torch.no_grad():
        for p in model.position.parameters():  # T5's bias, a learned table: well away from 0
            p.normal_()
        idx = torch.randint(0, 50, (2, 16))
        a, b = model(idx)[0], reference(idx)[0]
    if position_free(POSITIONS[position], MIXERS[mixer]):
        assert torch.equal(a, b), f"{mixer} is declared to ignore {position} but its output changes"
    else:
        assert (a - b).abs().max() > 1e-4, f"{position} changes nothing in {mixer}: declare what {mixer} applies"


def test_refused_per_layer_and_for_gau_chunked():
    with pytest.raises(ValueError, match="mixer mamba does not apply"):
        ModelConfig(position="alibi", mixer=["softmax", "mamba"], n_layers=2)
    ModelConfig(position="alibi", mixer=["softmax", "sliding", "gau"], n_layers=3, ffn="none")
    with pytest.raises(ValueError, match="gau.form=chunked") as err:
        ModelConfig(position="t5", mixer="gau", gau=GAUConfig(form="chunked"))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("position", [p for p in POSITIONS if p != "none"])
@pytest.mark.parametrize("mixer,extra", [
    ("softmax", dict(n_kv_heads=2)),
    ("sliding", dict(sliding=SlidingConfig(window=4))),  # blocked prefill (T > W), truncated cache, band chunks
    ("gau", dict(gau=GAUConfig(scores="relu2"))), ("gau", dict(gau=GAUConfig(scores="softmax")))],
    ids=["softmax-gqa", "sliding", "gau-relu2", "gau-softmax"])
def test_cached_decoding_equals_full_forward(position, mixer, extra):
    """A prefill, one-token steps and chunks after a prefix give the full forward's logits (biases, tables and
    rotations at the right absolute positions)."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**pair_config(position, mixer, **extra))).eval()
    idx = torch.randint(0, 50, (2, 21))
    with torch.no_grad():
        full, state = model(idx)[0], model.init_state(2)
        pieces = []
        for start, end in [(0, 7), (7, 8), (8, 9), (9, 17), (17, 21)]:
            logits, state = model(idx[:, start:end], state)
            pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-4, rtol=1e-4)


def test_sliding_blocked_path_with_a_bias_equals_the_dense_band():
    """Blocks of W queries over 2W keys give the band's scores with the bias of each absolute (i, j)."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**pair_config("alibi", "sliding", sliding=SlidingConfig(window=5)))).eval()
    attn = model.layers[0].mixer
    x = torch.randn(2, 17, 32)
    with torch.no_grad():
        blocked = attn(x)[0]
        q, k, v = attn.qkv(x, 0)
        pos = torch.arange(17)
        mask = attn.position.score_bias(4, pos, pos, q.dtype).masked_fill(~attn.band(17, 0, "cpu"), float("-inf"))
        dense = attn.attend(q, k, v, mask, causal=False)
    torch.testing.assert_close(blocked, dense, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
@pytest.mark.parametrize("position,mixer", [("alibi", "softmax"), ("t5", "softmax"), ("t5", "sliding")])
def test_activation_estimate_with_a_score_bias(position, mixer, precision):
    """SDPA with a float mask keeps what its math path needs (softmax.py); sliding's blocked path (W < T) too."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=200, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32,
                      position=position, mixer=mixer, sliding=SlidingConfig(window=8))
    net, T = Transformer(cfg), cfg.max_seq_len
    measured = saved_activation_bytes(net, 2, T, precision) - saved_activation_bytes(net, 1, T, precision)
    layers = sum(layer_bytes(cfg, m, cfg.layer_ffn(m), T, precision) for m in cfg.layer_mixers())
    assert T * (layers + head_bytes(cfg, precision)[0]) == pytest.approx(measured, rel=0.1)


class Distance(Position):
    """A toy score bias, -|i - j| / 4 on every head: q_pos (..., T_q), k_pos (..., T_k) -> (..., H, T_q, T_k)."""

    contributes = ("score_bias",)

    def score_bias(self, n_heads: int, q_pos: Tensor, k_pos: Tensor, dtype) -> Tensor:
        lag = (q_pos[..., :, None] - k_pos[..., None, :]).abs().to(dtype) / -4  # (..., T_q, T_k)
        return lag.unsqueeze(-3).expand(*lag.shape[:-2], n_heads, *lag.shape[-2:])


def test_a_position_defined_here_registers_with_one_line_and_works_with_softmax(monkeypatch):
    monkeypatch.setitem(POSITIONS, "distance", Distance)
    torch.manual_seed(0)
    model = Transformer(tiny_model_config(position="distance", n_kv_heads=2)).eval()
    assert_decodes_like_full_forward(model, 97)
    attn, x = model.layers[0].mixer, torch.randn(2, 9, 32)
    with torch.no_grad():
        q, k, v = attn.qkv(x, 0)  # (B, 4, T, 8), (B, 2, T, 8) x 2
        k, v = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
        i = torch.arange(9)
        scores = q @ k.transpose(-1, -2) / math.sqrt(8) - (i[:, None] - i[None, :]).abs() / 4
        scores = scores.masked_fill(i[None, :] > i[:, None], float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 9, 32)
        torch.testing.assert_close(attn(x)[0], attn.o_proj(y), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="position=distance biases attention scores"):
        ModelConfig(position="distance", mixer="linear")


def test_position_contract_is_checked_when_registered(monkeypatch):
    class Undeclared(Position):
        contributes = ("embed",)  # but overrides score_bias

        def score_bias(self, n_heads, q_pos, k_pos, dtype):
            return None

    with pytest.raises(TypeError, match="contributes .* overrides"):
        POSITIONS["undeclared"] = Undeclared

    class ScaledRope(RotaryPosition):  # computes otherwise: not Llama's rotary_emb unless it says so
        pass

    with pytest.raises(TypeError, match="inherits llama_module='rotary_emb'"):
        POSITIONS["scaled"] = ScaledRope


def test_a_softmax_subclass_declares_its_own_export_and_position_hooks(monkeypatch):
    class Gated(SoftmaxAttention):
        pass

    with pytest.raises(TypeError, match="inherits llama_module='self_attn' from SoftmaxAttention"):
        MIXERS["gated"] = Gated
    Gated.llama_module = None
    with pytest.raises(TypeError, match="inherits position_hooks"):
        MIXERS["gated"] = Gated
    Gated.position_hooks = ("rotate",)
    monkeypatch.setitem(MIXERS, "gated", Gated)
    assert "gated" not in [m for m, c in MIXERS.items() if "score_bias" in c.position_hooks]


def test_mixers_are_built_with_their_layer_index(monkeypatch):
    built = []

    class Indexed(SoftmaxAttention):
        llama_module = None
        position_hooks = SoftmaxAttention.position_hooks

        @classmethod
        def build(cls, cfg, position, layer_idx: int = 0):
            built.append(layer_idx)
            return cls(cfg, position)

    monkeypatch.setitem(MIXERS, "indexed", Indexed)
    Transformer(tiny_model_config(mixer=["indexed", "softmax"], n_layers=5))
    assert built == [0, 2, 4]


def test_position_parameters_are_the_models_once_and_a_run_keeps_them(tiny_corpus, tmp_path, capsys):
    model = Transformer(tiny_model_config(position="t5", n_layers=3))
    assert [k for k in model.state_dict() if "position" in k] == ["position.bias.weight"]
    assert model.position.bias.weight.shape == (32, 4)
    overrides = tiny_train_overrides(tiny_corpus, tmp_path)
    overrides["model"]["position"] = "t5"
    run = pretrain(load_config(None, overrides), ())
    assert "position.bias.weight" in read_shapes(run / "model.safetensors")
    generate_main(["--run", str(run), "--prompt", "Once upon a time", "--max_new_tokens", "5"])
    assert "Once upon a time" in capsys.readouterr().out


def test_learned_table_size_generation_cap_and_refusals():
    assert LearnedPosition.build(ModelConfig(position="learned", max_seq_len=48)).max_positions == 48
    assert LearnedPosition.build(ModelConfig(position="learned")).max_positions == 2048
    cfg = ModelConfig(vocab_size=50, d_model=32, n_layers=1, n_heads=4, position="learned",
                      learned=LearnedConfig(max_positions=12))
    model = Transformer(cfg).eval()
    assert context_room(model, 5) == 7
    assert model.generate(torch.zeros(1, 5, dtype=torch.long), 50, temperature=0).shape == (1, 12)
    with pytest.raises(ValueError, match="position 12 is past the learned table's 12 rows"):
        model(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match="learned.max_positions=12 is below max_seq_len=16"):
        ModelConfig(position="learned", max_seq_len=16, learned=LearnedConfig(max_positions=12))


@pytest.mark.parametrize("position", [p for p, cls in POSITIONS.items() if cls.llama_module is None])
def test_hf_export_refuses_positions_other_than_rope(position):
    with pytest.raises(ValueError) as err:
        check_llama(ModelConfig(position=position))
    assert "\n" not in str(err.value) and position in str(err.value)


def test_check_position_names_the_mixers_that_apply_a_bias():
    with pytest.raises(ValueError, match=r"\(softmax, .*sliding.*\)"):
        check_position("alibi", ALiBi, {"mamba": MIXERS["mamba"]}, MIXERS)
