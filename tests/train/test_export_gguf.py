"""GGUF export (train/interop/export_gguf.py): read back with gguf's own GGUFReader, and run by llama.cpp
where it is here.

- RoPE: llama.cpp's adjacent-pair rotation of the permuted projections gives our rotate-half attention scores.
- The file: every llama.cpp tensor name, shape and value (the q/k permutation inverted by an index formula written
  here, not by the module's inverse), every hyperparameter, the tokenizer (tokens, types, merges, bos/eos, pre).
- f16 halves the matrices and keeps the norms f32; our model rebuilt from the file gives the same logits.
- Refusals: non-Llama runs, non-byte-level tokenizers, output paths; a LoRA run is merged first.
- llama.cpp itself (`llama_cpp_py_sync`, a prebuilt llama.cpp; skipped when absent): it tokenizes as we do and
  its logits are ours.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from data.tokenizer import load_tokenizer, train_tokenizer  # noqa: E402
from model.config import ModelConfig  # noqa: E402
from model.lora import merge_lora  # noqa: E402
from model.positions import RotaryPosition  # noqa: E402
from model.transformer import Transformer  # noqa: E402
from train.config import Config, save_config  # noqa: E402
from train.interop.export_gguf import main, rope_permute, rope_unpermute  # noqa: E402
from train.rundir.load import load_run  # noqa: E402
from train.rundir.weights import save_weights  # noqa: E402

SENTENCES = ["Once upon a time, there was a little girl named Lily.", "Tom had a big red ball. He was happy.",
             'One day, Sue said, "Can I play with your kite?"', "They played all day. The end. 123 don't"] * 4
TEXT = "Once upon a time, Lily said: \"don't  stop\"\n\nThe end. 4412 days.<|endoftext|>Tom had 42 balls.  "
VOCAB_EXTRA = 7  # the model's vocabulary is larger than the tokenizer's: [PADi] ids


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(SENTENCES, vocab_size=300)


def make_run(root, tokenizer, tied=True, n_kv_heads=2, seed=0, **fields):
    cfg = Config()
    cfg.model = ModelConfig(vocab_size=tokenizer.get_vocab_size() + VOCAB_EXTRA, d_model=64, n_layers=2,
                            n_heads=4, n_kv_heads=n_kv_heads, max_seq_len=96, tie_embeddings=tied,
                            rope_theta=5000.0, norm_eps=1e-6, **fields)
    root.mkdir()
    save_config(cfg, root / "config.yaml")
    tokenizer.save(str(root / "tokenizer.json"))
    if any(k in fields for k in ("mixer", "position", "ffn")):
        return cfg, None
    torch.manual_seed(seed)
    model = Transformer(cfg.model).eval()
    with torch.no_grad():  # spread every weight (norm gains too) so a swapped tensor cannot hide
        for name, p in model.named_parameters():
            p.copy_(1 + 0.5 * torch.rand_like(p) if "norm" in name else 0.1 * torch.randn_like(p))
    save_weights(model, root / "model.safetensors", tied=tied)
    return cfg, model


def export(*args):
    main([str(a) for a in args])


def read(path):
    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    return reader, fields, {t.name: t for t in reader.tensors}


def to_ours(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row order back to ours, by the index formula: row h d + 2j + s held our h d + s d/2 + j."""
    d = w.shape[0] // heads
    out = np.empty_like(w)
    for h in range(heads):
        for j in range(d // 2):
            for s in range(2):
                out[h * d + s * d // 2 + j] = w[h * d + 2 * j + s]
    return out


def state_from_gguf(tensors, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict from the GGUF tensors (the inverse mapping, written out here on purpose)."""
    def get(name, heads=None):
        w = np.asarray(tensors[name].data, dtype=np.float32)
        return torch.from_numpy(to_ours(w, heads) if heads else w.copy())

    state = {"embed_tokens.weight": get("token_embd.weight"), "norm.weight": get("output_norm.weight")}
    state["lm_head.weight"] = get("output.weight") if "output.weight" in tensors else state["embed_tokens.weight"]
    for i in range(cfg.n_layers):
        ours, theirs = f"layers.{i}.", f"blk.{i}."
        state[ours + "norm_1.weight"] = get(theirs + "attn_norm.weight")
        state[ours + "norm_2.weight"] = get(theirs + "ffn_norm.weight")
        state[ours + "mixer.q_proj.weight"] = get(theirs + "attn_q.weight", cfg.n_heads)
        state[ours + "mixer.k_proj.weight"] = get(theirs + "attn_k.weight", cfg.kv_heads)
        state[ours + "mixer.v_proj.weight"] = get(theirs + "attn_v.weight")
        state[ours + "mixer.o_proj.weight"] = get(theirs + "attn_output.weight")
        for proj in ("gate", "up", "down"):
            state[ours + f"ffn.{proj}_proj.weight"] = get(theirs + f"ffn_{proj}.weight")
    return state


def expected_tensors(model: Transformer) -> dict[str, tuple[str, int | None]]:
    """llama.cpp name -> (our key, heads of the q/k permutation or None)."""
    cfg = model.cfg
    names = {"token_embd.weight": ("embed_tokens.weight", None), "output_norm.weight": ("norm.weight", None)}
    if not cfg.tie_embeddings:
        names["output.weight"] = ("lm_head.weight", None)
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        names.update({f"blk.{i}.attn_norm.weight": (p + "norm_1.weight", None),
                      f"blk.{i}.ffn_norm.weight": (p + "norm_2.weight", None),
                      f"blk.{i}.attn_q.weight": (p + "mixer.q_proj.weight", cfg.n_heads),
                      f"blk.{i}.attn_k.weight": (p + "mixer.k_proj.weight", cfg.kv_heads),
                      f"blk.{i}.attn_v.weight": (p + "mixer.v_proj.weight", None),
                      f"blk.{i}.attn_output.weight": (p + "mixer.o_proj.weight", None),
                      **{f"blk.{i}.ffn_{n}.weight": (p + f"ffn.{n}_proj.weight", None)
                         for n in ("gate", "up", "down")}})
    return names


def interleaved_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """llama.cpp's LLAMA_ROPE_TYPE_NORM on (B, H, T, d): the pair (x_2j, x_2j+1) turns by m theta^(-2j/d)."""
    T, d = x.shape[-2], x.shape[-1]
    angle = torch.arange(T, dtype=torch.float64)[:, None] * theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2)


def test_rope_permutation_gives_llama_cpp_rope_our_scores():
    torch.manual_seed(0)
    H, Hk, d, D, T, theta = 4, 2, 16, 32, 12, 10000.0
    wq, wk, x = torch.randn(H * d, D), torch.randn(Hk * d, D), torch.randn(1, T, D)
    assert torch.equal(rope_unpermute(rope_permute(wq, H), H), wq)

    def heads(w, n):
        return (x @ w.T).view(1, T, n, d).transpose(1, 2)

    q, k = RotaryPosition(D, theta).rotate(heads(wq, H), heads(wk, Hk))  # ours: rotate halves
    ours = q @ k.repeat_interleave(H // Hk, dim=1).transpose(-1, -2)
    q2 = interleaved_rope(heads(rope_permute(wq, H), H), theta)
    k2 = interleaved_rope(heads(rope_permute(wk, Hk), Hk), theta)
    theirs = q2 @ k2.repeat_interleave(H // Hk, dim=1).transpose(-1, -2)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    unpermuted = interleaved_rope(heads(wq, H), theta) @ interleaved_rope(heads(wk, Hk), theta).repeat_interleave(
        H // Hk, dim=1).transpose(-1, -2)
    assert not torch.allclose(unpermuted, ours, atol=1e-2)  # the check can tell a missing permutation


@pytest.mark.parametrize("tied,n_kv_heads", [(True, 2), (False, 4)])
def test_f32_file_holds_every_tensor_hyperparameter_and_token(tmp_path, tokenizer, tied, n_kv_heads):
    cfg, model = make_run(tmp_path / "run", tokenizer, tied=tied, n_kv_heads=n_kv_heads)
    export("--run", tmp_path / "run", "--out", tmp_path / "m.gguf", "--dtype", "f32")
    reader, fields, tensors = read(tmp_path / "m.gguf")

    ours = model.state_dict()
    names = expected_tensors(model)
    assert set(tensors) == set(names)
    for name, (key, heads) in names.items():
        t, want = tensors[name], ours[key].numpy()
        assert t.tensor_type == gguf.GGMLQuantizationType.F32, name
        assert list(t.shape) == list(reversed(want.shape)), name  # GGUF lists the innermost dimension first
        got = np.asarray(t.data).reshape(want.shape)
        np.testing.assert_array_equal(to_ours(got, heads) if heads else got, want, err_msg=name)
        if heads:
            assert not np.array_equal(got, want), name  # permuted: llama.cpp's row order differs from ours

    m = cfg.model
    assert fields["general.architecture"] == "llama"
    assert fields["general.file_type"] == gguf.LlamaFileType.ALL_F32
    expect = {"context_length": 96, "embedding_length": 64, "block_count": 2,
              "feed_forward_length": m.ffn_hidden("swiglu"), "attention.head_count": 4,
              "attention.head_count_kv": n_kv_heads, "vocab_size": m.vocab_size, "rope.dimension_count": 16}
    for key, value in expect.items():
        assert fields[f"llama.{key}"] == value, key
    assert fields["llama.rope.freq_base"] == pytest.approx(5000.0)
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)

    spec = json.loads(tokenizer.to_str())
    n_tok, eot = tokenizer.get_vocab_size(), tokenizer.token_to_id("<|endoftext|>")
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == m.vocab_size == n_tok + VOCAB_EXTRA
    assert tokens[:n_tok] == [tokenizer.id_to_token(i) for i in range(n_tok)]
    assert tokens[n_tok:] == [f"[PAD{i}]" for i in range(n_tok, m.vocab_size)]
    types = fields["tokenizer.ggml.token_type"]
    assert types[eot] == gguf.TokenType.CONTROL and types[n_tok] == gguf.TokenType.UNUSED
    assert sum(t == gguf.TokenType.NORMAL for t in types) == n_tok - 1
    merges = fields["tokenizer.ggml.merges"]
    assert len(merges) == len(spec["model"]["merges"]) > 0
    assert merges[0] == " ".join(spec["model"]["merges"][0]) and all(len(x.split(" ")) == 2 for x in merges)
    assert fields["tokenizer.ggml.bos_token_id"] == fields["tokenizer.ggml.eos_token_id"] == eot == 0
    assert fields["tokenizer.ggml.add_bos_token"] is False


def logits(model, idx):
    with torch.no_grad():
        return model(idx)[0]


@pytest.mark.parametrize("dtype,tol", [("f32", 1e-6), ("f16", 2e-2)])
def test_model_rebuilt_from_gguf_gives_our_logits(tmp_path, tokenizer, dtype, tol):
    cfg, model = make_run(tmp_path / "run", tokenizer, tied=False)
    export("--run", tmp_path / "run", "--out", tmp_path / "m.gguf", "--dtype", dtype)
    rebuilt = Transformer(cfg.model).eval()
    rebuilt.load_state_dict(state_from_gguf(read(tmp_path / "m.gguf")[2], cfg.model))
    idx = torch.tensor([tokenizer.encode(TEXT).ids])
    torch.testing.assert_close(logits(rebuilt, idx), logits(model, idx), atol=tol, rtol=tol)


def test_f16_halves_the_matrices_and_keeps_norms_f32(tmp_path, tokenizer):
    cfg, model = make_run(tmp_path / "run", tokenizer, tied=False)
    export("--run", tmp_path / "run", "--out", tmp_path / "32.gguf", "--dtype", "f32")
    export("--run", tmp_path / "run", "--out", tmp_path / "16.gguf", "--dtype", "f16")
    _, f32_fields, t32 = read(tmp_path / "32.gguf")
    _, f16_fields, t16 = read(tmp_path / "16.gguf")
    assert f16_fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    for name, t in t16.items():
        if name.endswith("norm.weight"):
            assert t.tensor_type == gguf.GGMLQuantizationType.F32 and t.n_bytes == t32[name].n_bytes, name
            np.testing.assert_array_equal(t.data, t32[name].data)
        else:
            assert t.tensor_type == gguf.GGMLQuantizationType.F16 and 2 * t.n_bytes == t32[name].n_bytes, name
            np.testing.assert_allclose(t.data.astype(np.float32), t32[name].data, atol=1e-3, rtol=1e-3)
    size16, size32 = (tmp_path / "16.gguf").stat().st_size, (tmp_path / "32.gguf").stat().st_size
    assert 0.45 < size16 / size32 < 0.56


@pytest.mark.parametrize("field,value", [("mixer", "linear"), ("mixer", ["softmax", "linear"]),
                                         ("position", "sinusoidal"), ("ffn", "gelu")])
def test_non_llama_run_exits_2_in_one_line(tmp_path, tokenizer, capsys, field, value):
    make_run(tmp_path / "run", tokenizer, **{field: value})
    with pytest.raises(SystemExit) as exit_info:
        export("--run", tmp_path / "run", "--out", tmp_path / "m.gguf")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and f"model.{field}=" in err and len(err.splitlines()) == 1
    assert list(tmp_path.glob("*gguf*")) == []


def test_non_byte_level_tokenizer_is_refused(tmp_path, tokenizer, capsys):
    make_run(tmp_path / "run", tokenizer)
    spec = json.loads(tokenizer.to_str())
    spec["pre_tokenizer"] = {"type": "Whitespace"}
    (tmp_path / "run" / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(SystemExit) as exit_info:
        export("--run", tmp_path / "run", "--out", tmp_path / "m.gguf")
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "'Whitespace'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "m.gguf").exists()


def test_output_path_rules(tmp_path, tokenizer, capsys):
    make_run(tmp_path / "run", tokenizer)
    out = tmp_path / "m.gguf"
    out.write_text("keep me")

    def refused(*extra, out=out):
        with pytest.raises(SystemExit) as exit_info:
            export("--run", tmp_path / "run", "--out", out, *extra)
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1
        return err

    assert "--force" in refused() and out.read_text() == "keep me"
    assert "does not exist" in refused(out=tmp_path / "missing" / "m.gguf")
    (tmp_path / "folder").mkdir()
    assert "is a folder" in refused(out=tmp_path / "folder")
    assert "input" in refused("--force", out=tmp_path / "run" / "model.safetensors")
    assert load_tokenizer(tmp_path / "run" / "tokenizer.json").get_vocab_size() == tokenizer.get_vocab_size()
    assert "not a GGUF file" in refused("--force") and out.read_text() == "keep me"  # --force replaces only GGUF
    out.unlink()
    export("--run", tmp_path / "run", "--out", out)
    export("--run", tmp_path / "run", "--out", out, "--force")
    assert gguf.GGUFReader(out).fields["general.architecture"].contents() == "llama"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "m.gguf", "run"]  # no temporary file left


def test_lora_run_exports_merged_weights(tmp_path, tiny_sft_run):
    base, sft = tiny_sft_run
    export("--run", sft, "--out", tmp_path / "sft.gguf", "--dtype", "f32")
    _, _, tensors = read(tmp_path / "sft.gguf")
    cfg, _, merged = load_run(sft)
    merge_lora(merged)
    _, _, base_model = load_run(base)
    rebuilt = Transformer(cfg.model).eval()
    rebuilt.load_state_dict(state_from_gguf(tensors, cfg.model))
    for key, value in merged.state_dict().items():
        torch.testing.assert_close(rebuilt.state_dict()[key], value, atol=0, rtol=0)
    base_q = base_model.state_dict()["layers.0.mixer.q_proj.weight"]
    assert not torch.allclose(rebuilt.state_dict()["layers.0.mixer.q_proj.weight"], base_q)  # the adapter is in


def _llama_cpp():
    llama = pytest.importorskip("llama_cpp_py_sync")
    try:
        from llama_cpp_py_sync._cffi_bindings import get_lib
        get_lib()
    except (OSError, RuntimeError) as err:  # a wheel whose library does not load on this machine
        pytest.skip(f"llama.cpp library does not load: {str(err)[:100]}")
    return llama


def llama_cpp_logits(llm, ids: list[int]) -> np.ndarray:
    """llama.cpp's logits at every position of `ids` (one llama_decode, all outputs requested)."""
    lib, ffi = llm._lib, llm._ffi
    batch = lib.llama_batch_init(len(ids), 0, 1)
    try:
        batch.n_tokens = len(ids)
        for i, token in enumerate(ids):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, i, 1, 1
            batch.seq_id[i][0] = 0
        assert lib.llama_decode(llm._ctx, batch) == 0
        n_vocab = llm.n_vocab
        return np.stack([np.frombuffer(ffi.buffer(lib.llama_get_logits_ith(llm._ctx, i), 4 * n_vocab), np.float32)
                         for i in range(len(ids))])
    finally:
        lib.llama_batch_free(batch)


@pytest.mark.parametrize("tied,dtype,tol", [(True, "f32", 1e-4), (False, "f16", 2e-2)])
def test_llama_cpp_tokenizes_and_predicts_like_us(tmp_path, tokenizer, tied, dtype, tol):
    llama = _llama_cpp()
    cfg, model = make_run(tmp_path / "run", tokenizer, tied=tied)
    export("--run", tmp_path / "run", "--out", tmp_path / "m.gguf", "--dtype", dtype)
    llm = llama.Llama(str(tmp_path / "m.gguf"), n_ctx=128, n_batch=128, n_threads=1, type_k="f32", type_v="f32")
    try:
        ids = tokenizer.encode(TEXT).ids
        assert llm.tokenize(TEXT, add_special=True, parse_special=True) == ids  # no bos added, EOT parsed
        assert llm.detokenize(ids) == TEXT and llm.eos_token == tokenizer.token_to_id("<|endoftext|>")
        theirs = llama_cpp_logits(llm, ids)
    finally:
        llm.close()
    ours = logits(model, torch.tensor([ids]))[0].numpy()
    np.testing.assert_allclose(theirs, ours, atol=tol, rtol=tol)
