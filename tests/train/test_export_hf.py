"""Hugging Face Llama export: logits parity with copied weights, the exported folder, and refusals.

Parity: our Transformer and `LlamaForCausalLM(llama_config(cfg))` with `to_hf_state_dict` weights give the
same fp32 logits (tied and untied head, GQA and MHA, eager and SDPA attention). End to end: a run directory
exported by `python -m train.interop.export_hf` loads with `from_pretrained` / `AutoTokenizer` and matches us;
a non-Llama config exits with code 2 and names the field.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from transformers import AutoTokenizer, LlamaForCausalLM  # noqa: E402

from data.tokenizer import train_tokenizer  # noqa: E402
from model.config import ModelConfig  # noqa: E402
from model.transformer import Transformer  # noqa: E402
from train.config import Config, save_config  # noqa: E402
from train.interop.export_hf import llama_config, main, to_hf_state_dict  # noqa: E402
from train.rundir.weights import save_weights  # noqa: E402

SENTENCES = ["Once upon a time, there was a little girl named Lily.", "Tom had a big red ball. He was happy.",
             'One day, Sue said, "Can I play with your kite?"', "They played all day. The end."] * 4


def make_model(tied: bool = True, n_kv_heads: int = 2, vocab_size: int = 128, seed: int = 0) -> Transformer:
    cfg = ModelConfig(vocab_size=vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads,
                      position="rope", mixer="softmax", ffn="swiglu", max_seq_len=64, tie_embeddings=tied)
    torch.manual_seed(seed)
    model = Transformer(cfg).eval()
    with torch.no_grad():  # spread every weight (norm gains too) so a swapped tensor cannot hide
        for name, p in model.named_parameters():
            p.copy_(1 + 0.5 * torch.rand_like(p) if "norm" in name
                    else 0.1 * torch.randn_like(p))
    return model


def hf_copy(model: Transformer, attn: str = "eager") -> LlamaForCausalLM:
    hf = LlamaForCausalLM(llama_config(model.cfg, attn_implementation=attn)).eval()
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(model), strict=False)
    assert unexpected == [] and missing == (["lm_head.weight"] if model.cfg.tie_embeddings else [])
    if model.cfg.tie_embeddings:  # HF re-ties the head to the embedding we loaded
        assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    return hf


@pytest.mark.parametrize("tied,n_kv_heads,attn", [(True, 2, "eager"), (False, 2, "eager"), (True, 4, "eager"),
                                                  (False, 1, "sdpa")])
def test_logits_match_llama(tied, n_kv_heads, attn):
    model = make_model(tied, n_kv_heads)
    hf = hf_copy(model, attn)
    idx = torch.randint(0, 128, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(idx)[0], hf(idx).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_state_dict_names():
    keys = set(to_hf_state_dict(make_model(tied=False)))
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
            "model.layers.1.self_attn.k_proj.weight", "model.layers.0.mlp.down_proj.weight",
            "model.layers.0.input_layernorm.weight", "model.layers.1.post_attention_layernorm.weight"} <= keys
    assert "lm_head.weight" not in to_hf_state_dict(make_model(tied=True))


def make_run(root, tokenizer, **model_fields):
    cfg = Config()
    cfg.model = ModelConfig(vocab_size=tokenizer.get_vocab_size(), d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                            max_seq_len=64, **model_fields)
    root.mkdir()
    save_config(cfg, root / "config.yaml")
    tokenizer.save(str(root / "tokenizer.json"))
    return cfg


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(SENTENCES, vocab_size=300)


@pytest.mark.parametrize("tied", [True, False])
def test_export_folder_loads_in_transformers(tmp_path, tokenizer, tied):
    cfg = make_run(tmp_path / "run", tokenizer, tie_embeddings=tied)
    model = make_model(tied, vocab_size=cfg.model.vocab_size)
    save_weights(model, tmp_path / "run" / "model.safetensors", tied=tied)
    main(["--run", str(tmp_path / "run"), "--out", str(tmp_path / "hf")])

    hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf.config.eos_token_id == hf_tok.eos_token_id == tokenizer.token_to_id("<|endoftext|>") == 0
    text = SENTENCES[0] + "<|endoftext|>" + SENTENCES[1]
    ids = hf_tok(text)["input_ids"]
    assert ids == tokenizer.encode(text).ids and hf_tok.decode(ids) == text
    idx = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], hf(idx).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("field,value", [("mixer", "linear"), ("mixer", ["softmax", "linear"]),
                                         ("position", "sinusoidal"), ("ffn", "gelu")])
def test_non_llama_config_exits_2_naming_the_field(tmp_path, tokenizer, capsys, field, value):
    make_run(tmp_path / "run", tokenizer, **{field: value})
    with pytest.raises(SystemExit) as exit_info:
        main(["--run", str(tmp_path / "run"), "--out", str(tmp_path / "hf")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"model.{field}=" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "hf").exists()


def test_missing_run_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--run", str(tmp_path / "nothing"), "--out", str(tmp_path / "hf")])
    assert exit_info.value.code == 2 and "not a run directory" in capsys.readouterr().err
