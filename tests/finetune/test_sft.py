"""Supervised fine-tuning end to end on the synthetic corpus: prompt masking and padding, LoRA and full
fine-tuning runs, adapter files, generate --adapter, merging, evaluation and command-line errors."""

from __future__ import annotations

import json
import re

import lightning as L
import pytest
import torch
from conftest import tiny_finetune_values, tiny_train_overrides
from safetensors.torch import load_file

from align.rewards import word_inclusion
from data.corpus import EOT
from data.instruct import format_header
from data.sft import IGNORE, SFTDataModule, example_tensors, instruct_examples, pad_batch, tokenize_examples
from finetune.__main__ import main as finetune_main
from finetune.config import finetune_config, read_run_config
from finetune.evaluate import generate_stories
from finetune.evaluate import main as evaluate_main
from finetune.merge import main as merge_main
from model.lora import lora_parameters
from train.cli import run_cli
from train.config import load_config
from train.generate.command import main as generate_main
from train.run import pretrain
from train.rundir.load import load_run


class OptimizerParams(L.Callback):
    """Records the model and the ids of the parameters the optimizer updates."""

    def on_train_start(self, trainer, pl_module):
        self.ids = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
        self.model = pl_module.model


@pytest.fixture(scope="module")
def base_run(tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    return pretrain(load_config(None, tiny_train_overrides(tiny_corpus, out, **{"train.num_samples": 0})))


def finetune_run(corpus, base_run, out, method):
    from finetune.sft import finetune

    values = tiny_finetune_values(corpus, out, base_run, {"method": method, "eval_prompts": 6, "eval_tokens": 12},
                                  **{"train.name": f"ft-{method}"})
    spy = OptimizerParams()
    return finetune(finetune_config(None, values), [spy]), spy


@pytest.fixture(scope="module")
def lora_run(tiny_corpus, base_run, tmp_path_factory):
    return finetune_run(tiny_corpus, base_run, tmp_path_factory.mktemp("lora"), "lora")


@pytest.fixture(scope="module")
def tokenizer(base_run):
    return load_run(base_run)[1]


def test_prompt_tokens_are_masked_and_story_tokens_scored(tiny_corpus, tokenizer):
    examples = instruct_examples(str(tiny_corpus), seed=0)["train"][:8]
    for (ids, n_prompt), ex in zip(tokenize_examples(tokenizer, examples, seq_len=512), examples):
        inputs, targets = example_tensors(ids, n_prompt)
        assert n_prompt == len(tokenizer.encode(ex.prompt).ids) and inputs.tolist() == ids[:-1]
        assert (targets[: n_prompt - 1] == IGNORE).all()
        story = targets[n_prompt - 1:].tolist()
        assert IGNORE not in story and story[-1] == tokenizer.token_to_id(EOT)
        assert tokenizer.decode(story[:-1]) == ex.story


def test_truncation_and_padding_never_scored(tiny_corpus, tokenizer):
    examples = instruct_examples(str(tiny_corpus), seed=0)["train"]
    seq_len = max(len(tokenizer.encode(ex.prompt).ids) for ex in examples[:4]) + 5
    short = tokenize_examples(tokenizer, examples[:4], seq_len)
    assert len(short) == 4 and all(len(ids) == seq_len + 1 for ids, _ in short)  # cut at seq_len + 1 tokens
    items = [example_tensors(ids[: n + 3 + i], n) for i, (ids, n) in enumerate(short)]
    inputs, targets = pad_batch(items, pad_id=0)
    for row, (x, y) in enumerate(items):
        assert (targets[row, len(y):] == IGNORE).all() and (inputs[row, len(x):] == 0).all()
        assert int((targets[row] != IGNORE).sum()) == 3 + row  # story tokens only
    assert tokenize_examples(tokenizer, examples[:4], seq_len=10) == []  # prompt longer than seq_len: dropped


def test_derived_examples_are_fitted_to_seq_len(tiny_corpus, tokenizer):
    seq_len = 110
    plain = instruct_examples(str(tiny_corpus), seed=0)["train"][:20]
    fitted = instruct_examples(str(tiny_corpus), seed=0, tokenizer=tokenizer, seq_len=seq_len)["train"][:20]
    assert fitted != plain and fitted == instruct_examples(str(tiny_corpus), 0, 0, 0, tokenizer, seq_len)["train"][:20]
    for ex, orig in zip(fitted, plain):
        assert orig.story.startswith(ex.story) and re.search(r"[.!?][\"”]?$", ex.story)
        assert word_inclusion({"words": ex.words}, ex.story) == 1.0 and ex.sentence in ex.story
        if ex != orig:
            assert len(tokenizer.encode(ex.prompt).ids) + len(tokenizer.encode(ex.story).ids) <= seq_len


def test_datamodule_order_is_seeded_and_batches_are_padded(tiny_corpus, tokenizer):
    examples = instruct_examples(str(tiny_corpus), seed=0)

    def batches(seed):
        dm = SFTDataModule(tokenizer, examples, 96, batch_size=4, grad_accum=1, max_steps=3, seed=seed, val_batches=1)
        dm.trainer = type("T", (), {"world_size": 1, "global_step": 0, "global_rank": 0})()
        return list(dm.train_dataloader())

    first, again, other = batches(1), batches(1), batches(2)
    assert len(first) == 3 and all(torch.equal(a[0], b[0]) for a, b in zip(first, again))
    assert not all(a[0].shape == b[0].shape and torch.equal(a[0], b[0]) for a, b in zip(first, other))


def test_instruct_records_are_read_from_a_local_copy(tmp_path):
    record = format_header(["ball", "red"], ["Dialogue"], summary="A ball.") + 'Tom saw a red ball. "Hi!"'
    for name, n in [("train.txt", 5), ("valid.txt", 2)]:
        (tmp_path / name).write_text("".join(f"{record} {i}\n{EOT}\n" for i in range(n)))
    splits = instruct_examples(str(tmp_path), seed=0)
    ex = splits["train"][0]
    assert len(splits["validation"]) == 2 and ex.words == ["ball", "red"] and ex.summary == "A ball."
    assert ex.story == 'Tom saw a red ball. "Hi!" 0' and ex.prompt.endswith("Story:\n")


def test_lora_run_freezes_base_and_saves_a_peft_adapter(lora_run, base_run):
    run_dir, spy = lora_run
    assert spy.ids == {id(p) for p in lora_parameters(spy.model)}  # only A and B reach AdamW
    for name in ["config.yaml", "tokenizer.json", "eval.md", "eval.json", "adapter/adapter_config.json",
                 "adapter/adapter_model.safetensors"]:
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "model.safetensors").exists()
    assert (run_dir / "tokenizer.json").read_text() == (base_run / "tokenizer.json").read_text()
    assert read_run_config(run_dir).finetune.base == str(base_run)
    base = load_file(str(base_run / "model.safetensors"))
    tuned = spy.model.state_dict()
    for key, tensor in base.items():
        lora_key = key.replace(".weight", ".base_layer.weight")
        assert torch.equal(tuned[lora_key if lora_key in tuned else key], tensor), key  # bit-identical
    adapter = load_file(str(run_dir / "adapter/adapter_model.safetensors"))
    assert adapter and all(k.startswith("base_model.model.layers.") for k in adapter)
    assert any(t.abs().sum() > 0 for k, t in adapter.items() if "lora_B" in k)  # B trained away from 0
    peft = pytest.importorskip("peft")
    cfg = peft.LoraConfig.from_pretrained(str(run_dir / "adapter"))
    assert cfg.r == 8 and set(cfg.target_modules) >= {"q_proj", "down_proj"}


def test_generate_with_adapter_and_merge_match(lora_run, base_run, tmp_path, capsys):
    run_dir = lora_run[0]
    generate_main(["--run", str(base_run), "--adapter", str(run_dir / "adapter"), "--max_new_tokens", "5"])
    assert capsys.readouterr().out.startswith("Once upon a time")
    merge_main(["--run", str(run_dir), "--out", str(tmp_path / "merged")])
    _, _, adapted = load_run(run_dir)
    _, _, merged = load_run(tmp_path / "merged")
    idx = torch.randint(0, 300, (2, 20))
    torch.testing.assert_close(merged(idx)[0], adapted(idx)[0], atol=1e-5, rtol=1e-5)
    _, _, plain = load_run(base_run)
    assert not torch.allclose(plain(idx)[0], adapted(idx)[0])


def test_eval_table_compares_base_and_fine_tuned(lora_run, tmp_path, capsys):
    run_dir = lora_run[0]
    results = json.loads((run_dir / "eval.json").read_text())
    assert list(results) == ["base", "lora fine-tuned"] and results["base"]["prompts"] == 6
    assert "| base |" in (run_dir / "eval.md").read_text()
    evaluate_main(["--run", str(run_dir), "--n", "3", "--max_new_tokens", "4", "--out", str(tmp_path)])
    table = capsys.readouterr().out
    assert "| lora fine-tuned |" in table and (tmp_path / "eval.json").is_file()


def test_grouped_generation_equals_one_prompt_at_a_time(lora_run, tiny_corpus):
    _, tokenizer, model = load_run(lora_run[0])
    prompts = [ex.prompt for ex in instruct_examples(str(tiny_corpus), seed=0)["validation"][:6]]
    assert generate_stories(model, tokenizer, prompts, 6) == generate_stories(model, tokenizer, prompts, 6, 1)


def test_full_method_trains_every_parameter(tiny_corpus, base_run, tmp_path):
    run_dir, spy = finetune_run(tiny_corpus, base_run, tmp_path, "full")
    assert spy.ids == {id(p) for p in spy.model.parameters()}
    assert (run_dir / "model.safetensors").is_file() and not (run_dir / "adapter").exists()
    base, tuned = load_file(str(base_run / "model.safetensors")), load_file(str(run_dir / "model.safetensors"))
    assert all(not torch.equal(base[k], tuned[k]) for k in base if "norm" not in k)


@pytest.mark.parametrize("extra, message", [
    ({"finetune.base": "nowhere"}, "finetune.base=nowhere"),
    ({"finetune.lora.target_modules": ["xyz_proj"]}, "matches no nn.Linear"),
    ({"model.d_model": 64}, "model.* is set"),
])
def test_command_errors_exit_2(tiny_corpus, base_run, tmp_path, capsys, extra, message):
    args = [f"--data.path={tiny_corpus}", f"--finetune.base={base_run}", "--log.wandb=false",
            f"--train.out_dir={tmp_path}", "--data.seq_len=96"] + [f"--{k}={v}" for k, v in extra.items()]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(finetune_main, args, load=finetune_config)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
