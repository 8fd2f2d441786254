"""Hugging Face Llama import: a randomly initialised `LlamaForCausalLM` saved with `save_pretrained` becomes a run
directory whose logits match HF's (tied and untied heads, GQA and MHA, sharded safetensors, weights-only .bin),
whose end-of-text token is the model's own (generation stops on it), that exports back to the same model, and
that fine-tunes (LoRA SFT) and aligns (DPO). Everything this stack does not compute is refused in one line."""

from __future__ import annotations

import json
import random

import pytest
import torch

pytest.importorskip("transformers")

from conftest import make_story, tiny_finetune_values  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM  # noqa: E402

from data.tokenizer import eot_id  # noqa: E402
from data.tokens import content_hash  # noqa: E402
from train.interop.export_hf import main as export_main  # noqa: E402
from train.interop.import_hf import main as import_main  # noqa: E402
from train.rundir.load import load_run  # noqa: E402
from train.rundir.weights import TOKENIZER_HASH, read_metadata  # noqa: E402


class Payload:
    """Unpickling this touches `marker`: proof that loading the weights executed code from the file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return type(self.marker).touch, (self.marker,)


SPECIALS = ["<unk>", "<s>", "</s>"]  # Llama's; no <|endoftext|>: the run must use the model's own end of text
BOS, EOS = 1, 2


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """A byte-level BPE (300 tokens) trained on the synthetic stories, so the corpus fixtures encode compactly."""
    rng = random.Random(0)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([make_story(rng) for _ in range(300)], trainer=trainer)
    assert tok.token_to_id("</s>") == EOS and tok.token_to_id("<|endoftext|>") is None
    return tok


def hf_model(tied=False, kv_heads=2, vocab_size=320, seed=0, **config) -> LlamaForCausalLM:
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=kv_heads, intermediate_size=96, max_position_embeddings=128,
                      rms_norm_eps=1e-3, rope_theta=5000.0, tie_word_embeddings=tied, bos_token_id=BOS,
                      eos_token_id=BOS, attn_implementation="eager", **config)  # config's eos: not the real one
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # spread every weight (norm gains too): a swapped or mis-scaled tensor cannot hide
        for name, p in model.named_parameters():
            p.copy_(1 + 0.5 * torch.rand_like(p) if "norm" in name else 0.1 * torch.randn_like(p))
    return model


def save_hf(model, tokenizer, path, generation_eos=EOS, **kwargs):
    model.save_pretrained(path, **kwargs)
    tokenizer.save(str(path / "tokenizer.json"))
    (path / "generation_config.json").unlink(missing_ok=True)
    if generation_eos is not None:
        GenerationConfig(bos_token_id=BOS, eos_token_id=generation_eos).save_pretrained(path)
    return path


def edit_json(path, **changes):
    values = json.loads(path.read_text())
    values.update(changes)
    path.write_text(json.dumps(values))


def tokens(n=2, t=40, vocab=300, seed=1):
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(seed))


def assert_same_logits(run_dir, hf, idx=None):
    idx = tokens() if idx is None else idx
    _, _, ours = load_run(run_dir)
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], hf(idx).logits, atol=1e-5, rtol=1e-5)


def refused(capsys, argv, *needles):
    capsys.readouterr()  # transformers' save progress bars
    with pytest.raises(SystemExit) as exit_info:
        import_main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("tied,kv_heads,shard", [(True, 2, False), (False, 2, False), (False, 4, False),
                                                 (True, 1, True)])
def test_imported_logits_match_hf(tmp_path, tokenizer, tied, kv_heads, shard):
    hf = hf_model(tied, kv_heads)
    save_hf(hf, tokenizer, tmp_path / "hf", **({"max_shard_size": "50KB"} if shard else {}))
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file() == shard
    import_main(["--model", str(tmp_path / "hf"), "--out", str(tmp_path / "runs" / "llama")])
    run = tmp_path / "runs" / "llama"
    cfg, tok, _ = load_run(run)
    m = cfg.model
    assert (m.d_model, m.n_layers, m.n_heads, m.kv_heads, m.d_ff, m.vocab_size, m.max_seq_len) == \
        (64, 2, 4, kv_heads, 96, 320, 128)
    assert (m.norm_eps, m.rope_theta, m.tie_embeddings, cfg.train.name) == (1e-3, 5000.0, tied, "llama")
    assert (run / "tokenizer.json").read_bytes() == (tmp_path / "hf" / "tokenizer.json").read_bytes()
    assert read_metadata(run / "model.safetensors")[TOKENIZER_HASH] == content_hash(tok.to_str())
    assert_same_logits(run, hf)


def test_eos_comes_from_generation_config_and_generation_stops_on_it(tmp_path, tokenizer, capsys):
    hf = hf_model()
    with torch.no_grad():  # every position predicts </s>: the residual is the embedding, whose dim 0 is large
        for layer in hf.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        hf.model.embed_tokens.weight[:, 0] = 5.0
        hf.model.norm.weight.fill_(1.0)
        hf.lm_head.weight.zero_()
        hf.lm_head.weight[EOS, 0] = 10.0
    save_hf(hf, tokenizer, tmp_path / "hf")  # config.json says eos 1 (<s>), generation_config.json 2 (</s>)
    import_main(["--model", str(tmp_path / "hf"), "--out", str(tmp_path / "run")])
    assert "'</s>' (generation_config.json" in capsys.readouterr().out
    cfg, tok, model = load_run(tmp_path / "run")
    assert cfg.data.eos_token == "</s>" and eot_id(tok) == EOS
    from train.generate.command import main as generate_main
    from train.generate.sampling import sample_stories

    calls = []
    real = model.generate
    model.generate = lambda *a, **k: calls.append(k["eos_id"]) or real(*a, **k)
    assert sample_stories(model, tok, "Once upon a time", max_new_tokens=12, temperature=0) == ["Once upon a time"]
    assert calls == [EOS]
    out = real(torch.tensor([tok.encode("Once upon a time").ids]), 12, temperature=0, eos_id=eot_id(tok))
    assert out[0, -1] == EOS and out.shape[1] == len(tok.encode("Once upon a time").ids) + 1  # stopped at once
    generate_main(["--run", str(tmp_path / "run"), "--max_new_tokens", "4", "--device", "cpu"])
    assert capsys.readouterr().out.startswith("Once upon a time")


@pytest.mark.parametrize("generation_eos,flag,config_eos,expected", [
    (None, None, EOS, "</s>"),  # no generation_config.json: config.json's
    ([EOS, BOS], None, BOS, "</s>"),  # a list: the first
    (EOS, "<s>", BOS, "<s>"),  # --eos-token wins
    (None, None, None, "</s>"),  # neither: tokenizer_config.json's eos_token
])
def test_eos_sources(tmp_path, tokenizer, generation_eos, flag, config_eos, expected):
    save_hf(hf_model(), tokenizer, tmp_path / "hf", generation_eos=generation_eos)
    edit_json(tmp_path / "hf" / "config.json", eos_token_id=config_eos)
    (tmp_path / "hf" / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "</s>"}}))
    flags = ["--eos-token", flag] if flag else []
    import_main(["--model", str(tmp_path / "hf"), "--out", str(tmp_path / "run"), *flags])
    cfg, tok, _ = load_run(tmp_path / "run")
    assert cfg.data.eos_token == expected and eot_id(tok) == tok.token_to_id(expected)


def test_no_eos_or_an_unknown_one_is_refused(tmp_path, tokenizer, capsys):
    save_hf(hf_model(), tokenizer, tmp_path / "hf", generation_eos=None)
    edit_json(tmp_path / "hf" / "config.json", eos_token_id=None)
    args = ["--model", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]
    refused(capsys, args, "no end-of-text token", "--eos-token")
    refused(capsys, [*args, "--eos-token", "<|endoftext|>"], "'<|endoftext|>' is not a token")
    edit_json(tmp_path / "hf" / "config.json", eos_token_id=310)  # inside the model's vocabulary, not the tokenizer's
    refused(capsys, args, "eos_token_id=310")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("field,value", [
    ("rope_scaling", {"rope_type": "linear", "factor": 2.0}),
    ("rope_parameters", {"rope_type": "llama3", "rope_theta": 5000.0, "factor": 8.0}),
    ("attention_bias", True), ("mlp_bias", True), ("hidden_act", "gelu"), ("head_dim", 32),
    ("architectures", ["MistralForCausalLM"]), ("model_type", "mistral"), ("layer_norm_eps", 1e-5),
    ("hidden_size", "64"),
])
def test_what_this_stack_does_not_compute_is_refused(tmp_path, tokenizer, capsys, field, value):
    save_hf(hf_model(), tokenizer, tmp_path / "hf")
    edit_json(tmp_path / "hf" / "config.json", **{field: value})
    refused(capsys, ["--model", str(tmp_path / "hf"), "--out", str(tmp_path / "run")], f"{field}={value!r}")
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run*"))


def test_missing_unexpected_and_misshapen_tensors_are_refused(tmp_path, tokenizer, capsys):
    save_hf(hf_model(), tokenizer, tmp_path / "hf")
    path, args = tmp_path / "hf" / "model.safetensors", ["--model", str(tmp_path / "hf"), "--out", str(tmp_path / "r")]
    state = load_file(str(path))
    save_file({k: v for k, v in state.items() if k != "model.layers.1.mlp.up_proj.weight"}, str(path))
    refused(capsys, args, "missing ['model.layers.1.mlp.up_proj.weight']")
    save_file({**state, "model.layers.0.self_attn.q_norm.weight": torch.ones(16)}, str(path))
    refused(capsys, args, "unexpected ['model.layers.0.self_attn.q_norm.weight']")
    save_file(state, str(path))
    edit_json(tmp_path / "hf" / "config.json", intermediate_size=128)
    refused(capsys, args, "model.layers.0.mlp.gate_proj.weight has shape (96, 64)", "(128, 64)")
    edit_json(tmp_path / "hf" / "config.json", intermediate_size=96, num_hidden_layers=3)
    refused(capsys, args, "holds 2 layers", "num_hidden_layers=3")
    (tmp_path / "elsewhere").mkdir()
    path.rename(tmp_path / "elsewhere" / "shard.safetensors")  # shards must be files in the folder, not paths out of it
    (tmp_path / "hf" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        k: "../elsewhere/shard.safetensors" for k in state}}))
    refused(capsys, args, "'../elsewhere/shard.safetensors': not a file name")
    assert not (tmp_path / "r").exists()


def test_weights_only_bin_imports_and_a_pickle_that_runs_code_is_refused(tmp_path, tokenizer, capsys):
    hf = hf_model(tied=False)
    save_hf(hf, tokenizer, tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").unlink()
    state = {k: v.to(torch.bfloat16) for k, v in hf.state_dict().items()}  # bf16 on disk, fp32 in the run
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)  # older checkpoints: derived, skipped
    torch.save(state, tmp_path / "hf" / "pytorch_model.bin")
    import_main(["--model", str(tmp_path / "hf"), "--out", str(tmp_path / "run")])
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    assert load_file(str(tmp_path / "run" / "model.safetensors"))["norm.weight"].dtype == torch.float32
    assert_same_logits(tmp_path / "run", hf)

    marker = tmp_path / "pwned"
    torch.save({**state, "model.norm.weight": Payload(marker)}, tmp_path / "hf" / "pytorch_model.bin")
    refused(capsys, ["--model", str(tmp_path / "hf"), "--out", str(tmp_path / "evil")], "weights-only",
            "refused without running it")
    assert not marker.exists() and not (tmp_path / "evil").exists()


def test_import_then_export_gives_back_the_same_model(tmp_path, tokenizer):
    hf = hf_model(tied=False, kv_heads=1)
    save_hf(hf, tokenizer, tmp_path / "hf")
    import_main(["--model", str(tmp_path / "hf"), "--out", str(tmp_path / "run")])
    export_main(["--run", str(tmp_path / "run"), "--out", str(tmp_path / "hf2")])
    back = LlamaForCausalLM.from_pretrained(tmp_path / "hf2", attn_implementation="eager").eval()
    assert back.config.eos_token_id == EOS and back.config.num_key_value_heads == 1
    original, exported = load_file(str(tmp_path / "hf" / "model.safetensors")), back.state_dict()
    assert all(torch.equal(t, exported[k]) for k, t in original.items())
    idx = tokens()
    with torch.no_grad():
        torch.testing.assert_close(back(idx).logits, hf(idx).logits, atol=1e-5, rtol=1e-5)


def test_out_is_checked_and_never_replaced(tmp_path, tokenizer, capsys):
    save_hf(hf_model(), tokenizer, tmp_path / "hf")
    model = ["--model", str(tmp_path / "hf")]
    refused(capsys, [*model, "--out", str(tmp_path / "runs" / "..")], "plain folder name")
    refused(capsys, [*model, "--out", str(tmp_path / "hf" / "run")], "input")
    refused(capsys, [*model, "--out", str(tmp_path)], "input")  # would hold the input folder
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    refused(capsys, [*model, "--out", str(tmp_path / "busy")], "not an empty folder")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    run = tmp_path / "runs" / "llama"
    import_main([*model, "--out", str(run)])
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    refused(capsys, [*model, "--out", str(run)], "run folder")
    refused(capsys, [*model, "--out", str(run / "inner")], "run folder")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in run.parent.iterdir()) == ["llama"]
    load_run(run)


@pytest.fixture(scope="module")
def imported(tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("imported")
    hf = hf_model(tied=True)
    save_hf(hf, tokenizer, root / "hf")
    import_main(["--model", str(root / "hf"), "--out", str(root / "runs" / "llama")])
    return root / "runs" / "llama"


def quick(tiny_corpus, out, base, name, finetune=None, **extra):
    return tiny_finetune_values(tiny_corpus, out, base, {"eval_prompts": 0, **(finetune or {})},
                                **{"train.name": name, "train.num_samples": 0, "train.max_steps": 2,
                                   "train.val_every": 2, "train.ckpt_every": 2, "train.val_batches": 1, **extra})


def test_lora_finetune_and_dpo_run_on_an_imported_model(tiny_corpus, imported, tmp_path):
    from align.dpo import train_dpo
    from align.policy import align_config
    from data.sft import instruct_examples, tokenize_examples
    from finetune.config import finetune_config, read_run_config
    from finetune.sft import finetune

    cfg, tok, _ = load_run(imported)
    examples = instruct_examples(str(tiny_corpus), seed=0)["train"][:4]
    assert all(ids[-1] == EOS for ids, _ in tokenize_examples(tok, examples, 512))  # SFT examples end with </s>
    sft = finetune(finetune_config(None, quick(tiny_corpus, tmp_path, imported, "sft")))
    sft_cfg, sft_tok, sft_model = load_run(sft)
    assert (sft / "adapter" / "adapter_model.safetensors").is_file() and sft_cfg.data.eos_token == "</s>"
    assert read_run_config(sft).data.eos_token == "</s>"  # the SFT run's own config.yaml inherits it
    assert (sft / "tokenizer.json").read_bytes() == (imported / "tokenizer.json").read_bytes()
    dpo = train_dpo(align_config(None, quick(tiny_corpus, tmp_path, sft, "dpo", {"method": "lora"})))
    dpo_cfg, dpo_tok, dpo_model = load_run(dpo)
    assert dpo_cfg.data.eos_token == "</s>" and eot_id(dpo_tok) == EOS
    idx = tokens(vocab=300)
    with torch.no_grad():
        assert not torch.allclose(dpo_model(idx)[0], sft_model(idx)[0])  # the policy moved
