"""Reading a Hugging Face Llama checkpoint without trusting it, for train/interop/import_hf.py:
its files, names and shapes
checked against config.json before a tensor is read, and its tensors under our names (export_hf's KEY_MAP).

    model.safetensors, or the shards model.safetensors.index.json names (plain file names in the folder only);
    else pytorch_model.bin or its shards, read with torch.load(weights_only=True): tensors and containers only,
    so a pickle that would run code is refused, never run.

The rotary `inv_freq` buffers some older checkpoints hold are derived from rope_theta and skipped. A tied head
stored anyway must equal the embedding. Every tensor must be floating point and finite (quantized, integer or NaN
weights are refused) and becomes contiguous fp32, as this stack's runs hold them.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from inputs.json import read_json
from model.transformer import Transformer
from train.config import Config
from train.interop.export_hf import KEY_MAP
from train.rundir.weights import CheckpointError, check_values, read_shapes

DERIVED = re.compile(r"model\.(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq")  # buffers of older checkpoints
WEIGHTS = [("safetensors", "model.safetensors"), ("bin", "pytorch_model.bin")]  # preferred first; + .index.json


def weight_files(model_dir: Path) -> tuple[str, Path, list[Path]]:
    """(kind, what to name in messages, files): one file, or the shards an index names (plain file names only)."""
    for kind, name in WEIGHTS:
        if (model_dir / name).is_file():
            return kind, model_dir / name, [model_dir / name]
        index = model_dir / f"{name}.index.json"
        if index.is_file():
            weight_map = read_json(index, "weights index").get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{index} has no weight_map")
            shards = sorted({v if isinstance(v, str) else repr(v) for v in weight_map.values()})
            for shard in shards:
                if Path(shard).name != shard or shard in (".", ".."):
                    raise CheckpointError(f"{index} names shard {shard!r}: not a file name in {model_dir}")
                if not (model_dir / shard).is_file():
                    raise CheckpointError(f"{index} names shard {shard}, which {model_dir} lacks")
            return kind, index, [model_dir / shard for shard in shards]
    raise CheckpointError(f"{model_dir} has no weights: model.safetensors, pytorch_model.bin or their .index.json")


def _torch_load(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a pickle that wants to run code (UnpicklingError), a truncated or foreign file
        first = (str(err).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path} is not a weights-only checkpoint ({type(err).__name__}: {first[:160]}); "
                              "refused without running it: convert it to safetensors") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise CheckpointError(f"{path} is not a state dict of named tensors")
    return state


def read_weights(kind: str, files: list[Path]) -> tuple[dict[str, tuple], object]:
    """-> (name -> shape, get(name) -> tensor). Safetensors shapes come from the headers: nothing is read yet."""
    shapes, where, loaded = {}, {}, {}
    for path in files:
        state = _torch_load(path) if kind == "bin" else None
        for key, shape in (read_shapes(path) if state is None else {k: v.shape for k, v in state.items()}).items():
            if key in shapes:
                raise CheckpointError(f"{key} is in two shards: {where[key].name} and {path.name}")
            shapes[key], where[key] = tuple(shape), path
        loaded.update(state or {})

    def get(key: str) -> torch.Tensor:
        if kind == "bin":
            return loaded[key]
        from safetensors import safe_open

        with safe_open(str(where[key]), framework="pt") as f:
            return f.get_tensor(key)

    return shapes, get


def hf_key(key: str) -> str:
    """Our tensor name -> Hugging Face Llama's (export_hf's KEY_MAP)."""
    for pattern, template in KEY_MAP:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, template, key)
    raise CheckpointError(f"weight {key!r} has no Llama counterpart")


def convert_weights(cfg: Config, label: Path, shapes: dict[str, tuple], get) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under our names, fp32, after every name and shape is checked against config.json."""
    m = cfg.model
    saved = {k: v for k, v in shapes.items() if not DERIVED.fullmatch(k)}
    layers = {int(k.split(".")[2]) for k in saved if re.match(r"model\.layers\.\d+\.", k)}
    if len(layers) != m.n_layers:  # before a (meta) model of the claimed depth is built
        raise CheckpointError(f"{label} holds {len(layers)} layers but config.json says num_hidden_layers="
                              f"{m.n_layers}")
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in Transformer(m).state_dict().items()}
    names = {hf_key(k): k for k in ours if not (m.tie_embeddings and k == "lm_head.weight")}
    extra_head = m.tie_embeddings and "lm_head.weight" in saved  # some tied checkpoints store the head too
    missing = sorted(set(names) - set(saved))
    unexpected = sorted(set(saved) - set(names) - ({"lm_head.weight"} if extra_head else set()))
    if missing or unexpected:
        raise CheckpointError(f"{label} does not fit config.json: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for name, key in names.items():
        if saved[name] != ours[key]:
            raise CheckpointError(f"{label}: {name} has shape {saved[name]} but config.json implies {ours[key]}")
    state = {}
    for name, key in names.items():
        tensor = get(name)
        check_values(label, name, tensor)
        state[key] = tensor.to(torch.float32).contiguous()
        check_values(label, name, state[key])  # a float64 or bfloat16 value beyond fp32's range
    if extra_head and not torch.equal(get("lm_head.weight").float(), state["embed_tokens.weight"]):
        raise CheckpointError(f"{label}: lm_head.weight differs from model.embed_tokens.weight but config.json "
                              "says tie_word_embeddings=true")
    return state
