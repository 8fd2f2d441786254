"""`python -m train.interop.export_hf --run runs/<name> [--out DIR]`: write a Hugging Face `LlamaForCausalLM` folder.

A model with RoPE positions, softmax attention in every layer and SwiGLU FFNs is a Llama: same pre-norm
block, same RMSNorm (fp32, cast back, times the gain), same RoPE convention (rotate halves), same GQA head
split and the same bias-free projections. Export is therefore a renaming of tensors, no permutation:

    embed_tokens.weight             -> model.embed_tokens.weight                     (V, D)
    layers.{i}.norm_1.weight        -> model.layers.{i}.input_layernorm.weight          (D,)
    layers.{i}.mixer.{q,k,v,o}_proj -> model.layers.{i}.self_attn.{q,k,v,o}_proj     q (H d, D), k/v (Hk d, D)
    layers.{i}.norm_2.weight        -> model.layers.{i}.post_attention_layernorm.weight (D,)
    layers.{i}.ffn.{gate,up,down}_proj -> model.layers.{i}.mlp.{gate,up,down}_proj   gate/up (F, D), down (D, F)
    norm.weight                     -> model.norm.weight                             (D,)
    lm_head.weight                  -> lm_head.weight (only when untied; tied heads are re-tied by HF) (V, D)

The folder holds config.json (`llama_config`), model.safetensors, generation_config.json and the BPE
tokenizer as a `PreTrainedTokenizerFast` whose bos, eos, unk and pad are the run's end-of-text token
(`<|endoftext|>`, or an imported model's data.eos_token). `transformers` is an optional dependency
(`pip install -e '.[bench]'`), imported only when needed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from torch import Tensor, nn

from data.tokenizer import eot_id, eot_token
from model.config import ModelConfig
from model.ffn import FFNS
from model.lora import merge_lora
from model.mixers import MIXERS
from model.positions import POSITIONS
from train.cli import ArgumentParser, user_errors_exit_2
from train.config import ConfigError, load_config
from train.rundir.paths import check_output
from train.rundir.weights import CheckpointError

KEY_MAP = [  # (our key pattern, HF key template), applied to the whole key
    (r"embed_tokens\.weight", "model.embed_tokens.weight"),
    (r"layers\.(\d+)\.norm_1\.weight", r"model.layers.\1.input_layernorm.weight"),
    (r"layers\.(\d+)\.mixer\.([qkvo])_proj\.weight", r"model.layers.\1.self_attn.\2_proj.weight"),
    (r"layers\.(\d+)\.norm_2\.weight", r"model.layers.\1.post_attention_layernorm.weight"),
    (r"layers\.(\d+)\.ffn\.(gate|up|down)_proj\.weight", r"model.layers.\1.mlp.\2_proj.weight"),
    (r"norm\.weight", "model.norm.weight"),
    (r"lm_head\.weight", "lm_head.weight"),
]
DEFAULT_MAX_POSITIONS = 2048  # only when model.max_seq_len was never resolved (0); RoPE itself has no limit


class MissingDependency(ImportError):
    """`transformers` is not installed; the CLI prints how to install it and exits with code 2."""


def _transformers():
    try:
        import transformers
    except ImportError:
        raise MissingDependency("Hugging Face export needs transformers: pip install -e '.[bench]' "
                                "(or pip install 'transformers>=4.44')") from None
    return transformers


def check_llama(cfg: ModelConfig) -> None:
    """Raise ConfigError naming the first field that makes this model something other than a Llama: every
    component must declare itself Llama's own (`llama_module`, model/component.py): its position, each layer's
    mixer (Llama's self_attn) and FFN (Llama's mlp)."""
    if getattr(POSITIONS[cfg.position], "llama_module", None) is None:
        raise ConfigError(f"model.position={cfg.position!r} cannot be exported as Llama (Llama's own: "
                          f"{', '.join(n for n, c in POSITIONS.items() if getattr(c, 'llama_module', None))})")
    for mixer in cfg.layer_counts():  # each mixer once, whatever the depth
        ffn = cfg.layer_ffn(mixer)
        if MIXERS[mixer].llama_module != "self_attn":
            raise ConfigError(f"model.mixer={cfg.mixer!r} cannot be exported as Llama: its layers include {mixer!r}; "
                              f"Llama needs {', '.join(n for n, c in MIXERS.items() if c.llama_module)} in every layer")
        if ffn == "none" or FFNS[ffn].llama_module != "mlp":
            raise ConfigError(f"model.ffn={cfg.ffn!r} cannot be exported as Llama, which needs "
                              f"{', '.join(n for n, c in FFNS.items() if c.llama_module)} after every attention")


def llama_config(cfg: ModelConfig, tokenizer=None, **overrides):
    """The `LlamaConfig` of our model config; bos/eos = the tokenizer's end-of-text id (0 without one).

    `overrides` go to LlamaConfig as they are (e.g. attn_implementation="sdpa" for an in-memory model)."""
    check_llama(cfg)
    eot = eot_id(tokenizer) if tokenizer is not None else 0
    ffn = cfg.layer_ffn(next(iter(cfg.layer_counts())))  # one FFN kind in every layer (check_llama)
    kwargs = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_hidden(ffn),
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim, max_position_embeddings=cfg.max_seq_len or DEFAULT_MAX_POSITIONS,
        rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,  # transformers 5 moves it into rope_parameters
        tie_word_embeddings=cfg.tie_embeddings, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        hidden_act="silu", attention_bias=False, mlp_bias=False, initializer_range=cfg.init_std,
        torch_dtype="float32", architectures=["LlamaForCausalLM"],
    )
    return _transformers().LlamaConfig(**{**kwargs, **overrides})


def to_hf_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Our Transformer's weights under Hugging Face Llama names (contiguous CPU tensors, tied head dropped)."""
    check_llama(model.cfg)
    out = {}
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight" and model.cfg.tie_embeddings:
            continue
        for pattern, template in KEY_MAP:
            if re.fullmatch(pattern, key):
                out[re.sub(pattern, template, key)] = tensor.detach().contiguous().cpu()
                break
        else:
            raise CheckpointError(f"weight {key!r} has no Llama counterpart; was the model changed (e.g. LoRA)?")
    return out


def hf_tokenizer(tokenizer, max_length: int = DEFAULT_MAX_POSITIONS):
    """Wrap a `tokenizers.Tokenizer` as a `PreTrainedTokenizerFast` with its end-of-text token as every special."""
    eot = eot_token(tokenizer)  # the run's end-of-text token (data.eos_token)
    return _transformers().PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=eot, eos_token=eot,
                                                   unk_token=eot, pad_token=eot, model_max_length=max_length)


def _save_tokenizer(tokenizer, out_dir: Path, max_length: int) -> None:
    hf_tokenizer(tokenizer, max_length).save_pretrained(out_dir)
    path = out_dir / "tokenizer_config.json"  # transformers 5 writes its own class name, which 4.x cannot load
    settings = json.loads(path.read_text())
    settings["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(settings, indent=2) + "\n")


def export(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the HF folder for a run directory; returns the output path. `out_dir` must be a new or empty folder
    outside every run directory: the HF files (model.safetensors, tokenizer.json) would replace a run's."""
    from safetensors.torch import save_file

    from train.rundir.adapter import resolve
    from train.rundir.load import load_run

    run_dir = Path(run_dir)
    out_dir = check_output(out_dir, None, inputs=(run_dir, *resolve(run_dir)))
    if (run_dir / "config.yaml").is_file():  # name the non-Llama field before building the model
        check_llama(load_config(run_dir / "config.yaml", run_file=True).model)
    cfg, tokenizer, model = load_run(run_dir)
    merge_lora(model)  # a LoRA run exports as its merged weights, W + s B A
    transformers = _transformers()
    config = llama_config(cfg.model, tokenizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out_dir)
    save_file(to_hf_state_dict(model), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    eot = eot_id(tokenizer)
    transformers.GenerationConfig(bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, do_sample=True,
                                  temperature=0.8, top_k=50).save_pretrained(out_dir)
    _save_tokenizer(tokenizer, out_dir, config.max_position_embeddings)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run directory (runs/<name>)")
    parser.add_argument("--out", default=None, help="output folder for the Hugging Face model (default: <name>-hf "
                        "beside the run, e.g. runs/demo-hf)")
    args = parser.parse_args(argv)
    with user_errors_exit_2(MissingDependency):
        run = Path(args.run)
        out = export(run, args.out or run.parent / f"{run.resolve().name}-hf")
    print(f"wrote {out} (LlamaForCausalLM.from_pretrained / AutoTokenizer.from_pretrained)")


if __name__ == "__main__":
    main()
