"""`python -m train.interop.import_hf --model DIR --out runs/<name>`: a Hugging Face `LlamaForCausalLM` folder as a run.

The reverse of train/interop/export_hf.py, from its knowledge: tensor names are its `KEY_MAP` read backwards, and the
model is built from the components that declare themselves Llama's own (`llama_module`, model/component.py)
and checked with its `check_llama`. The folder comes from someone else, so nothing in it is trusted:

    config.json   -> config.yaml model.* (CONFIG_FIELDS). What a Llama config may say that this stack does
                     not compute (rope scaling, biases, another activation or norm, another architecture) is
                     refused in one line naming the field and its value: a model that imports is computed
                     exactly, never approximately.
    weights       -> model.safetensors (fp32, our names, the tokenizer's hash in its metadata, train/rundir/weights.py).
                     model.safetensors or shards (model.safetensors.index.json); else pytorch_model.bin or its
                     shards, read with torch.load(weights_only=True) only: a pickle that would run code is
                     refused, never run. Names and shapes are checked against config.json first (safetensors:
                     from the headers, before a tensor is read); rotary inv_freq buffers are derived, skipped.
    tokenizer.json -> tokenizer.json, copied byte for byte.
    end of text   -> data.eos_token: --eos-token, else generation_config.json's eos_token_id (the first of a
                     list), else config.json's, else tokenizer_config.json's eos_token. `data.tokenizer.eot_id`
                     returns it for this run and the runs made from it (finetune inherits data.eos_token), so
                     generation stops on it and SFT / DPO / GRPO end and pad examples with it.

`--out` is a new run directory: its last part is a plain name (train/rundir/paths.py); it may not be, hold or lie
inside the input or any run folder, and an existing folder that is not empty is refused (an import never replaces a
run: `check_output`). config.json's sizes are checked against this machine's memory (train/estimate/memory.py) before a
weight is read. Files are written into `.<name>.tmp<PID>` beside it and renamed into place, so a refused or failed
import leaves nothing. Needs no `transformers`.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from data.corpus import DataError
from data.tokenizer import load_tokenizer
from data.tokens import content_hash
from inputs.json import read_json
from model.ffn import FFNS
from model.mixers import MIXERS
from model.positions import POSITIONS
from train.cli import ArgumentParser, user_errors_exit_2
from train.config import Config, ConfigError, DataConfig, load_config, save_config
from train.estimate.memory import check_memory
from train.interop.export_hf import check_llama
from train.interop.hf_weights import convert_weights, read_weights, weight_files
from train.rundir.load import check_fits
from train.rundir.paths import MAX_NAME, check_output, check_run_name
from train.rundir.weights import read_shapes, save_weights

ARCHITECTURE = "LlamaForCausalLM"
CONFIG_FIELDS = [  # (config.json field, model.* field, kind, default when absent: LlamaConfig's; None = required)
    ("hidden_size", "d_model", int, None),
    ("num_hidden_layers", "n_layers", int, None),
    ("num_attention_heads", "n_heads", int, None),
    ("num_key_value_heads", "n_kv_heads", int, 0),  # absent: n_heads (0 says the same to ModelConfig)
    ("intermediate_size", "d_ff", int, None),
    ("vocab_size", "vocab_size", int, None),
    ("max_position_embeddings", "max_seq_len", int, 2048),
    ("rms_norm_eps", "norm_eps", float, 1e-6),
    ("rope_theta", "rope_theta", float, 10000.0),  # transformers 5 writes it in rope_parameters
    ("tie_word_embeddings", "tie_embeddings", bool, False),
    ("initializer_range", "init_std", float, 0.02),
]
COMPUTED = [  # (field, the value this stack computes, what it is); absent means that value too
    ("model_type", "llama", "architecture"),
    ("rope_scaling", None, "RoPE scaling (this stack has plain RoPE)"),
    ("attention_bias", False, "q/k/v/o biases (this stack's projections have none)"),
    ("mlp_bias", False, "FFN biases (this stack's projections have none)"),
    ("hidden_act", "silu", "FFN activation (this stack's SwiGLU uses silu)"),
    ("attention_dropout", 0.0, "attention dropout (this stack has none)"),
    ("quantization_config", None, "quantized weights (this stack loads float weights)"),
    ("layer_norm_eps", None, "LayerNorm (this stack's norm is RMSNorm, rms_norm_eps)"),
    ("norm_type", None, "norm (this stack's norm is RMSNorm, rms_norm_eps)"),
]
ROPE_KEYS = {"rope_theta", "rope_type", "type"}  # rope_parameters with anything else scale RoPE


def _json(path: Path, required: bool = True) -> dict:
    if not path.is_file():
        if required:
            raise ConfigError(f"{path} not found: --model must be a Hugging Face model folder (config.json, weights, "
                              "tokenizer.json)")
        return {}
    return read_json(path, path.name)  # inputs/json.py: a regular UTF-8 file holding one finite JSON object


def _value(path: Path, key: str, value, kind: type):
    ok = isinstance(value, bool) if kind is bool else (
        isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
        and math.isfinite(value) and (value >= 0 if key == "rms_norm_eps" else value > 0))
    if not ok:
        raise ConfigError(f"{path}: {key}={value!r} is not a valid {'positive ' if kind is not bool else ''}"
                          f"{kind.__name__}")
    return kind(value)


def model_fields(path: Path, raw: dict) -> dict:
    """config.json -> our model.* values; a field naming something this stack does not compute raises ConfigError."""
    arch = raw.get("architectures", [ARCHITECTURE])
    if arch != [ARCHITECTURE]:
        raise ConfigError(f"{path}: architectures={arch!r}; only {ARCHITECTURE} imports")
    for key, computed, what in COMPUTED:
        if raw.get(key, computed) != computed:
            raise ConfigError(f"{path}: {key}={raw[key]!r} is not supported: {what}")
    rope = raw.get("rope_parameters") or {}
    if not isinstance(rope, dict):
        raise ConfigError(f"{path}: rope_parameters={rope!r} is not supported (expected a mapping)")
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default" or set(rope) - ROPE_KEYS:
        extra = {k: v for k, v in rope.items() if k not in ROPE_KEYS or kind != "default"}
        raise ConfigError(f"{path}: rope_parameters={extra!r} is not supported: RoPE scaling (this stack has "
                          "plain RoPE)")
    values = {**raw, "rope_theta": raw.get("rope_theta", rope.get("rope_theta"))}
    fields = {}
    for key, ours, kind, default in CONFIG_FIELDS:
        if values.get(key) is None and default is None:
            raise ConfigError(f"{path} has no {key}")
        fields[ours] = default if values.get(key) is None else _value(path, key, values[key], kind)
    head_dim = raw.get("head_dim")
    if head_dim is not None and (not isinstance(head_dim, int) or head_dim * fields["n_heads"] != fields["d_model"]):
        raise ConfigError(f"{path}: head_dim={head_dim!r} is not supported: this stack's heads are hidden_size / "
                          f"num_attention_heads = {fields['d_model']} / {fields['n_heads']} wide")
    fields["n_kv_heads"] = fields["n_kv_heads"] or fields["n_heads"]
    fields.update(position=_llama_own(POSITIONS, "rotary_emb"), mixer=_llama_own(MIXERS, "self_attn"),
                  ffn=_llama_own(FFNS, "mlp"), dropout=0.0)
    return fields


def _llama_own(registry, module: str) -> str:
    return next(name for name, cls in registry.items() if getattr(cls, "llama_module", None) == module)


def find_eos(model_dir: Path, raw: dict, tokenizer, override: str | None) -> tuple[str, str]:
    """(the end-of-text token's text, where it was read)."""
    if override is not None:
        if tokenizer.token_to_id(override) is None:
            raise DataError(f"--eos-token {override!r} is not a token of {model_dir}/tokenizer.json")
        return override, "--eos-token"
    for name in ("generation_config.json", "config.json"):
        values = raw if name == "config.json" else _json(model_dir / name, required=False)
        ids = values.get("eos_token_id")
        if ids is None or ids == []:
            continue
        first = ids[0] if isinstance(ids, list) else ids
        token = tokenizer.id_to_token(first) if isinstance(first, int) and not isinstance(first, bool) else None
        if token is None:
            raise DataError(f"{model_dir / name}: eos_token_id={ids!r} is no token of tokenizer.json "
                            f"({tokenizer.get_vocab_size()} tokens); pass --eos-token TEXT")
        return token, f"{name} eos_token_id={ids}"
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        eos = _json(model_dir / name, required=False).get("eos_token")
        eos = eos.get("content") if isinstance(eos, dict) else eos
        if isinstance(eos, str) and tokenizer.token_to_id(eos) is not None:
            return eos, f"{name} eos_token"
    raise DataError(f"{model_dir}: no end-of-text token (no eos_token_id in generation_config.json or config.json, "
                    "no eos_token in tokenizer_config.json); pass --eos-token TEXT")


def check_out(out: str | Path, model_dir: Path) -> Path:
    """`out` if the import may write there (module docstring); else ConfigError / CheckpointError."""
    out = Path(out)
    try:
        check_run_name(out.name, key="--out")
    except ConfigError:
        raise ConfigError(f"--out {out}: the run's name {out.name!r} must be a plain folder name of at most "
                          f"{MAX_NAME} characters (letters, digits, '.', '_', '-', not starting with '.'): --out "
                          "runs/<name>") from None
    return check_output(out, None, inputs=(model_dir,))


def import_model(model_dir: str | Path, out: str | Path, eos_token: str | None = None) -> tuple[Path, str]:
    """Write the run directory `out` for the HF folder `model_dir` -> (out, a one-line summary)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ConfigError(f"--model {model_dir} is not a folder; give a Hugging Face model folder")
    out = check_out(out, model_dir)
    raw = _json(model_dir / "config.json")
    fields = model_fields(model_dir / "config.json", raw)
    tokenizer_file = model_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise DataError(f"{model_dir} has no tokenizer.json; write one with transformers: "
                        "AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)")
    tokenizer = load_tokenizer(tokenizer_file)
    if tokenizer.get_vocab_size() > fields["vocab_size"]:
        raise DataError(f"{tokenizer_file} has {tokenizer.get_vocab_size()} tokens but config.json's vocab_size is "
                        f"{fields['vocab_size']}")
    eos, eos_from = find_eos(model_dir, raw, tokenizer, eos_token)
    data = {"vocab_size": tokenizer.get_vocab_size(), "eos_token": eos,
            "seq_len": min(DataConfig().seq_len, fields["max_seq_len"])}
    try:
        cfg = load_config(None, {"model": fields, "data": data,
                                 "train": {"name": out.name, "out_dir": str(out.parent)}})
        check_llama(cfg.model)
    except ConfigError as err:
        raise ConfigError(f"{model_dir}/config.json does not fit this stack: {err}") from None
    check_memory(cfg, "cpu", source=f"{model_dir}/config.json")  # before a weight is read
    kind, label, files = weight_files(model_dir)
    state = convert_weights(cfg, label, *read_weights(kind, files))
    _write(out, cfg, state, tokenizer_file)
    return out, (f"{kind}, {cfg.model.n_layers} layers, d_model={cfg.model.d_model}, vocab={cfg.model.vocab_size}, "
                 f"end of text {eos!r} ({eos_from})")


def _write(out: Path, cfg: Config, state: dict, tokenizer_file: Path) -> None:
    """Write the run into `.<name>.tmp<PID>` beside `out`, then rename it into place (`out` is absent or empty)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        tmp.mkdir()
        shutil.copyfile(tokenizer_file, tmp / "tokenizer.json")  # byte for byte; hashed as load_run hashes it
        tokenizer_hash = content_hash(load_tokenizer(tmp / "tokenizer.json").to_str())
        save_weights(None, tmp / "model.safetensors", tied=cfg.model.tie_embeddings, state=state,
                     tokenizer_hash=tokenizer_hash)
        check_fits(tmp / "model.safetensors", read_shapes(tmp / "model.safetensors"), cfg)  # what load_run checks
        save_config(cfg, tmp / "config.yaml")
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="Hugging Face LlamaForCausalLM folder (save_pretrained)")
    parser.add_argument("--out", required=True, help="the run directory to write (runs/<name>)")
    parser.add_argument("--eos-token", default=None, help="end-of-text token text (default: the model's eos)")
    args = parser.parse_args(argv)
    with user_errors_exit_2():
        out, summary = import_model(args.model, args.out, args.eos_token)
    print(f"wrote {out} ({summary}); try: python -m train.generate --run {out}")


if __name__ == "__main__":
    main()
