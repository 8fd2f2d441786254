"""`python -m train.interop.export_gguf --run runs/<name> [--out FILE.gguf] [--dtype f16|f32] [--force]`: a GGUF file.

The file is what llama.cpp's own `convert_hf_to_gguf.py` writes for a `LlamaForCausalLM` ("llama" architecture),
made from the run directly with gguf-py's `GGUFWriter`. Only a Llama-shaped model exports (RoPE, softmax attention
and SwiGLU in every layer, RMSNorm): the same `check_llama` as `train.interop.export_hf`, which asks each registered
component for its `llama_module`, so a non-Llama run is refused in one line naming the field. A LoRA run is merged
first (W + s B A), as `train.interop.export_hf` does.

Tensors go through the Hugging Face names (`export_hf.to_hf_state_dict`) and gguf-py's own Llama name map:

    token_embd (V, D)   blk.N.attn_norm (D,)   blk.N.attn_q (H d, D)   blk.N.attn_k / attn_v (Hk d, D)
    blk.N.attn_output (D, H d)   blk.N.ffn_norm (D,)   blk.N.ffn_gate / ffn_up (F, D)   blk.N.ffn_down (D, F)
    output_norm (D,)    output (V, D): only when untied; without it llama.cpp reuses token_embd as the head

(numpy shapes; GGUF lists dimensions innermost first, so token_embd reads {D, V} there, as llama.cpp expects).

The q/k permutation. We rotate halves, as HF Llama does (model/positions/rope.py): the pair (x_j, x_{j+d/2}) of each
head turns by m theta_j. llama.cpp's "llama" uses LLAMA_ROPE_TYPE_NORM, which turns adjacent pairs
(x_{2j}, x_{2j+1}) by the same m theta_j. So, exactly like `convert_hf_to_gguf.py` (LlamaModel.permute), the
rows of every head of W_q (H heads) and W_k (Hk heads) are reordered: new row 2j + s = old row s d/2 + j
(s = 0, 1): reshape (heads, 2, d/2, D), swap the middle axes, reshape back. The scores q.k are unchanged, since
q and k get the same reordering; v, o and the FFN need none. `rope_unpermute` is the inverse.

Tokenizer: our byte-level BPE (data/tokenizer.py: ByteLevel pre-tokenizer, GPT-2 regex, no prefix space, no
normalizer) is GPT-2's, so it is written as `tokenizer.ggml.model = "gpt2"` with `tokenizer.ggml.pre = "gpt-2"`:
llama.cpp then splits text with GPT-2's regex and maps bytes as GPT-2 does, which is what `tokenizers` does here.
Tokens keep their byte-level spelling (`Ġ` for a space), merges are "left right", the run's end-of-text token
(`data.tokenizer.eot_id`, `<|endoftext|>`; a special token, so CONTROL type) is bos and eos, and no bos is
added to prompts (`train.generate` adds none). A tokenizer of
another kind is refused rather than written with a pre-tokenizer that would split text differently. Ids the model
has beyond the tokenizer's are `[PADi]` (UNUSED), as the convert script writes them.

f16 stores every matrix as float16 and keeps the norm gains float32 (llama.cpp's MOSTLY_F16); f32 keeps all.
The file is written to `.<name>.tmp<PID>` beside `--out`, then renamed: an existing file is replaced only with
--force and only if it is a GGUF file (its magic bytes), never inside a run folder, and never half-written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from data.corpus import DataError
from data.tokenizer import eot_id
from model.lora import merge_lora
from train.cli import ArgumentParser, user_errors_exit_2
from train.config import load_config
from train.interop.export_hf import DEFAULT_MAX_POSITIONS, check_llama, to_hf_state_dict
from train.rundir.paths import FileKind, check_output, starts_with
from train.rundir.weights import CheckpointError

ARCH = "llama"
DTYPES = {"f32": np.float32, "f16": np.float16}
F16_MAX = float(np.finfo(np.float16).max)
GGUF = FileKind("a GGUF file", starts_with(b"GGUF"))  # the format's magic bytes


class MissingDependency(ImportError):
    """`gguf` is not installed; the CLI prints how to install it and exits with code 2."""


def _gguf():
    try:
        import gguf
    except ImportError:
        raise MissingDependency("GGUF export needs gguf: pip install -e '.[gguf]' (or 'gguf>=0.10')") from None
    return gguf


def rope_permute(w: Tensor, n_heads: int) -> Tensor:
    """Rows of a q or k projection (n_heads d, D) from rotate-half order to llama.cpp's adjacent pairs."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def rope_unpermute(w: Tensor, n_heads: int) -> Tensor:
    """The inverse of `rope_permute`: llama.cpp's row order back to ours."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def gguf_tensors(model: nn.Module) -> dict[str, Tensor]:
    """Our model's weights under llama.cpp names, q/k permuted (float32 CPU tensors, tied head dropped)."""
    gguf = _gguf()
    cfg = model.cfg
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.n_layers)
    out = {}
    for hf_name, tensor in to_hf_state_dict(model).items():  # refuses a non-Llama model
        name = names.get_name(hf_name, try_suffixes=(".weight",))
        if name is None:
            raise CheckpointError(f"weight {hf_name!r} has no llama.cpp name")
        tensor = tensor.float()
        if hf_name.endswith("self_attn.q_proj.weight"):
            tensor = rope_permute(tensor, cfg.n_heads)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            tensor = rope_permute(tensor, cfg.kv_heads)
        out[name] = tensor.contiguous()
    return out


def gguf_vocab(tokenizer, vocab_size: int) -> dict:
    """tokens, token types, merges and the llama.cpp pre-tokenizer name of a byte-level BPE `tokenizers` JSON;
    DataError for any other kind of tokenizer (llama.cpp would split its text differently)."""
    gguf = _gguf()
    spec = json.loads(tokenizer.to_str())
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    if model.get("type") != "BPE":
        raise DataError(f"tokenizer model {model.get('type')!r} cannot be exported to GGUF: only byte-level BPE")
    if spec.get("normalizer") is not None:
        raise DataError(f"tokenizer normalizer {spec['normalizer'].get('type')!r} has no llama.cpp 'gpt2' "
                        "counterpart; only the byte-level BPE of data/tokenizer.py exports")
    if (pre.get("type") != "ByteLevel" or not pre.get("use_regex", True) or pre.get("add_prefix_space")
            or (spec.get("decoder") or {}).get("type") != "ByteLevel"):
        raise DataError(f"tokenizer pre-tokenizer {pre.get('type')!r} (add_prefix_space="
                        f"{pre.get('add_prefix_space')}) is not GPT-2's byte-level one; llama.cpp would split "
                        "text differently")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    if any(len(m.split(" ")) != 2 for m in merges):
        raise DataError("tokenizer merges contain a space inside a token; not a byte-level BPE")
    by_id = {i: t for t, i in tokenizer.get_vocab(with_added_tokens=True).items()}
    added = {a["id"]: a.get("special", False) for a in spec.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[i])
        types.append(gguf.TokenType.NORMAL if i not in added else
                     gguf.TokenType.CONTROL if added[i] else gguf.TokenType.USER_DEFINED)
    return {"tokens": tokens, "types": types, "merges": merges, "pre": "gpt-2"}


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise CheckpointError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")


def check_out_file(out: str | Path, force: bool, *inputs: str | Path | None) -> Path:
    """`out` if a GGUF file may be written there (train/rundir/paths.py `check_output`: outside the inputs and every
    run folder; an existing file only with `force` and only if it is a GGUF file), in a folder that exists."""
    out = check_output(out, GGUF, force, inputs)
    if not out.parent.is_dir():
        raise CheckpointError(f"--out {out}: folder {out.parent} does not exist; create it first")
    return out


def write_gguf(model: nn.Module, tokenizer, out: Path, dtype: str = "f16", name: str = "tinystack") -> None:
    """Write `model` (a Llama-shaped Transformer) and its tokenizer as a llama.cpp GGUF file at `out`."""
    gguf = _gguf()
    cfg = model.cfg
    check_llama(cfg)
    _check_dtype(dtype)
    tensors = gguf_tensors(model)
    vocab = gguf_vocab(tokenizer, cfg.vocab_size)
    eot = eot_id(tokenizer)  # the run's end-of-text token
    if eot is None:
        raise DataError("the tokenizer has no end-of-text token <|endoftext|> to use as bos/eos")
    ffn = cfg.layer_ffn(next(iter(cfg.layer_counts())))  # one FFN kind in every layer (check_llama)
    file_type = gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32

    writer = gguf.GGUFWriter(None, ARCH)
    writer.add_name(name)
    writer.add_context_length(cfg.max_seq_len or DEFAULT_MAX_POSITIONS)
    writer.add_embedding_length(cfg.d_model)
    writer.add_block_count(cfg.n_layers)
    writer.add_feed_forward_length(cfg.ffn_hidden(ffn))
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(cfg.kv_heads)
    writer.add_rope_freq_base(float(cfg.rope_theta))
    writer.add_layer_norm_rms_eps(float(cfg.norm_eps))
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    writer.add_token_merges(vocab["merges"])
    writer.add_bos_token_id(eot)
    writer.add_eos_token_id(eot)
    writer.add_add_bos_token(False)

    for key, tensor in tensors.items():
        array = tensor.numpy()
        if array.ndim > 1:  # matrices take --dtype; norm gains stay float32 (as llama.cpp's MOSTLY_F16)
            if dtype == "f16" and float(np.abs(array).max(initial=0.0)) > F16_MAX:
                raise CheckpointError(f"{key} has values beyond float16's range ({F16_MAX:g}); use --dtype f32")
            array = array.astype(DTYPES[dtype])
        writer.add_tensor(key, array)

    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)


def export(run_dir: str | Path, out: str | Path, dtype: str = "f16", force: bool = False) -> Path:
    """Write the GGUF file of a run directory (a LoRA run is merged first); returns its path."""
    from train.rundir.adapter import resolve
    from train.rundir.load import load_run

    _gguf()
    run_dir = Path(run_dir)
    _check_dtype(dtype)
    out = check_out_file(out, force, run_dir, *resolve(run_dir))
    if (run_dir / "config.yaml").is_file():  # name the non-Llama field before building the model
        check_llama(load_config(run_dir / "config.yaml", run_file=True).model)
    _, tokenizer, model = load_run(run_dir)
    merge_lora(model)  # a LoRA run exports as its merged weights, W + s B A
    with torch.no_grad():
        write_gguf(model, tokenizer, out, dtype, name=run_dir.resolve().name)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run directory (runs/<name>)")
    parser.add_argument("--out", default=None, help="the .gguf file to write (its folder must exist; default: "
                        "<name>-<dtype>.gguf beside the run, e.g. runs/demo-f16.gguf)")
    parser.add_argument("--dtype", default="f16", choices=list(DTYPES), help="matrix precision (norms stay f32)")
    parser.add_argument("--force", action="store_true", help="replace --out if it is an existing GGUF file")
    args = parser.parse_args(argv)
    with user_errors_exit_2(MissingDependency):
        run = Path(args.run)
        out = export(run, args.out or run.parent / f"{run.resolve().name}-{args.dtype}.gguf", args.dtype, args.force)
    print(f"wrote {out} ({args.dtype}; llama-cli -m {out} -p \"Once upon a time\")")


if __name__ == "__main__":
    main()
