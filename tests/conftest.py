"""Shared fixtures: tiny model configs, a small synthetic story corpus, and the real TinyStories data."""

from __future__ import annotations

import os
import random
from pathlib import Path

# One intra-op thread per process: tests are tiny, and with several processes on 2 cores (DDP tests, subprocess
# CLIs) spinning OpenMP threads slow a step down 100x. Set before torch loads so subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
# No test reaches the network: a hub id (e.g. a fuzzed data.path) fails at once instead of retrying for minutes.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from model.config import ModelConfig  # noqa: E402

torch.set_num_threads(1)

NAMES = ["Lily", "Tom", "Sue", "Ben", "Mia", "Max"]
THINGS = ["ball", "cat", "tree", "car", "cake", "box", "dog", "kite"]
FEELINGS = ["happy", "sad", "excited", "scared"]


def make_story(rng: random.Random, extra: int = 0) -> str:
    """A four-line story, plus `extra` more lines (varied lengths)."""
    name, other = rng.sample(NAMES, 2)
    thing, feeling = rng.choice(THINGS), rng.choice(FEELINGS)
    lines = [f"Once upon a time, there was a little {rng.choice(['girl', 'boy'])} named {name}.",
             f"{name} had a big {thing}. {name} was very {feeling}.",
             f'One day, {other} said, "Can I play with your {thing}?"',
             *(f"They ran to the {rng.choice(THINGS)} and felt {rng.choice(FEELINGS)}." for _ in range(extra)),
             f"{name} said yes, and they played with the {thing} all day. The end."]
    return "\n".join(lines)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A directory with train.txt (400 stories) and valid.txt (40), TinyStories .txt format."""
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    for name, n in [("train.txt", 400), ("valid.txt", 40)]:
        (root / name).write_text("".join(make_story(rng) + "\n<|endoftext|>\n" for _ in range(n)))
    return root


@pytest.fixture(scope="session")
def varied_corpus(tmp_path_factory) -> Path:
    """Like tiny_corpus (200 + 20 stories), but the stories have 4 to 10 lines: lengths differ."""
    root = tmp_path_factory.mktemp("varied_corpus")
    rng = random.Random(1)
    for name, n in [("train.txt", 200), ("valid.txt", 20)]:
        (root / name).write_text("".join(make_story(rng, rng.randint(0, 6)) + "\n<|endoftext|>\n" for _ in range(n)))
    return root


@pytest.fixture(scope="session")
def tinystories_dir() -> Path:
    """The real TinyStories data behind `data.path: tinystories-sample`: the shipped sample, or $TINYSTORIES_DIR."""
    from data.sources import SAMPLE, resolve_path

    return Path(resolve_path(SAMPLE))


def tiny_model_config(**overrides) -> ModelConfig:
    cfg = ModelConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4, max_seq_len=64)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def tiny_train_overrides(corpus: Path, out_dir: Path, **extra) -> dict:
    """Config overrides for a seconds-long pretraining run on the synthetic corpus."""
    values = {
        "model": {"d_model": 32, "n_layers": 2, "n_heads": 4},
        "data": {"path": str(corpus), "vocab_size": 300, "seq_len": 32, "cache_dir": str(out_dir / "cache")},
        "train": {"max_steps": 8, "batch_size": 4, "warmup_steps": 2, "val_every": 4, "val_batches": 2,
                  "ckpt_every": 4, "log_every": 1, "out_dir": str(out_dir), "name": "tiny", "num_samples": 1,
                  "sample_tokens": 8, "progress_bar": False, "lr": 3e-3},
        "log": {"wandb": False},
    }
    for dotted, value in extra.items():
        section, *rest = dotted.split(".")
        node = values.setdefault(section, {})
        for part in rest[:-1]:
            node = node.setdefault(part, {})
        node[rest[-1]] = value
    return values


def tiny_finetune_values(corpus: Path, out_dir: Path, base: Path, finetune: dict, **extra) -> dict:
    """Overrides for a seconds-long fine-tuning or alignment run from `base`: model.* and the vocabulary come
    from the base run; seq_len 96 (derived prompts are ~30 tokens with this vocabulary)."""
    values = tiny_train_overrides(corpus, out_dir, **{"train.lr": 1e-2, **extra})
    del values["model"], values["data"]["vocab_size"]
    values["data"]["seq_len"] = 96
    values["finetune"] = {"base": str(base), "method": "lora", **finetune}
    return values


@pytest.fixture(scope="session")
def tiny_sft_run(tiny_corpus, tmp_path_factory) -> tuple[Path, Path]:
    """(base run, LoRA SFT run on it): seconds-long runs on the synthetic corpus, shared by the alignment tests."""
    from finetune.config import finetune_config
    from finetune.sft import finetune
    from train.config import load_config
    from train.run import pretrain

    out = tmp_path_factory.mktemp("sft")
    base = pretrain(load_config(None, tiny_train_overrides(tiny_corpus, out, **{"train.num_samples": 0})))
    values = tiny_finetune_values(tiny_corpus, out, base, {"eval_prompts": 0},
                                  **{"train.name": "sft", "train.num_samples": 0})
    return base, finetune(finetune_config(None, values))


def assert_decodes_like_full_forward(model, vocab_size: int, tol: float = 1e-5) -> None:
    """A 6-token prefill then 7 one-token steps with the cache give the full forward's logits, and greedy
    `generate` extends the prompt."""
    idx = torch.randint(0, vocab_size, (2, 13))
    with torch.no_grad():
        full, _ = model(idx)
        first, state = model(idx[:, :6], model.init_state(2))
        steps = []
        for t in range(6, 13):
            logits, state = model(idx[:, t:t + 1], state)
            steps.append(logits)
    torch.testing.assert_close(torch.cat([first] + steps, dim=1), full, rtol=tol, atol=tol)
    out = model.generate(idx[:, :5], max_new_tokens=6, temperature=0)
    assert out.shape == (2, 11) and torch.equal(out[:, :5], idx[:, :5])


def assert_mixer_is_causal(mixer, d_model: int, tol: float = 1e-5) -> None:
    """Changing tokens 11.. of a 20-token input leaves outputs 0..10 as they were, and changes the rest."""
    x = torch.randn(1, 20, d_model)
    x2 = x.clone()
    x2[:, 11:] = torch.randn(1, 9, d_model)
    with torch.no_grad():
        y, y2 = mixer(x)[0], mixer(x2)[0]
    torch.testing.assert_close(y[:, :11], y2[:, :11], rtol=tol, atol=tol)
    assert not torch.allclose(y[:, 11:], y2[:, 11:])


def saved_activation_bytes(model, batch: int, seq_len: int, precision: str = "32") -> int:
    """Bytes of the (distinct, non-parameter) tensors autograd keeps for backward in one training forward."""
    import torch.nn.functional as F

    storages: dict[int, int] = {}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    idx = torch.randint(0, model.cfg.vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision.endswith("mixed")):
            logits, _ = model(idx)
            F.cross_entropy(logits.float().flatten(0, 1), idx.flatten())
    return sum(storages.values())


def train_losses(run_dir: Path) -> dict[int, float]:
    """step -> logged train/loss of a run directory's metrics.csv."""
    import csv

    with (run_dir / "metrics.csv").open() as f:
        return {int(float(r["step"])): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def stop_at(step: int):
    """A callback interrupting training after `step` optimizer steps, like a crash right after a checkpoint."""
    import lightning as L

    class StopAt(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step >= step:
                trainer.should_stop = True

    return StopAt()


def decode_in_pieces(mixer, x, sizes):
    """Feed x (B, T, D) through the mixer's cache in pieces of the given sizes (each with its absolute offset)
    -> (the outputs concatenated (B, T, D), the final cache)."""
    cache, ys, start = mixer.init_cache(x.shape[0], x.device, x.dtype), [], 0
    for size in sizes:
        y, cache = mixer(x[:, start:start + size], cache, offset=start)
        ys.append(y)
        start += size
    return torch.cat(ys, dim=1), cache
