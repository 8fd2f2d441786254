"""Sampling settings no distribution comes from, and devices that do not exist, are one line and exit 2 before the
run is loaded (train/generate/flags.py, model/generate.py `check_sampling`, train/rundir/load.py `pick_device`),
in every command that samples; the library refuses them too instead of failing inside torch. A reader that closes
the output (`| head`) ends the command quietly."""

from __future__ import annotations

import pytest
import torch
from untouched import refused

from align.evaluate import main as align_evaluate_main
from finetune.evaluate import main as finetune_evaluate_main
from model.config import ModelConfig
from model.transformer import Transformer
from train.generate.command import main as generate_main

BAD_FLAGS = [
    (["--num_samples", "0"], "--num_samples=0: must be at least 1"),
    (["--max_new_tokens", "0"], "--max_new_tokens=0: must be at least 1"),
    (["--max_new_tokens", "-5"], "--max_new_tokens=-5: must be at least 1"),
    (["--top_p", "0"], "--top_p=0.0: must be in (0, 1]"),
    (["--top_p", "1.5"], "--top_p=1.5: must be in (0, 1]"),
    (["--top_p", "nan"], "--top_p=nan"),
    (["--top_k", "-1"], "--top_k=-1: must be 0 (all tokens) or positive"),
    (["--temperature", "-1"], "--temperature=-1.0: must be 0 (greedy) or a positive finite number"),
    (["--temperature", "nan"], "--temperature=nan"),
    (["--temperature", "inf"], "--temperature=inf"),
    (["--seed", "-1"], "--seed=-1: a seed is in [0, 4294967295]"),
    (["--seed", str(2**32)], "--seed=4294967296"),
    (["--device", "tpu9"], "--device='tpu9': give auto, cpu, cuda, cuda:N or mps"),
    (["--device", "cpu:1"], "--device='cpu:1'"),
    (["--device", "cuda:99"], "--device=cuda:99 but"),
    (["--prompt", ""], "--prompt '' encodes to no tokens"),
]


@pytest.mark.parametrize("args, message", BAD_FLAGS)
def test_generate_refuses_bad_flags_in_one_line(tiny_sft_run, capsys, args, message):
    assert message in refused(generate_main, ["--run", tiny_sft_run[0], *args], capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused(tiny_sft_run, capsys):
    assert "but 0 CUDA GPU(s) are visible" in refused(generate_main, ["--run", tiny_sft_run[0], "--device", "cuda"],
                                                      capsys)


@pytest.mark.parametrize("args, message", [a for a in BAD_FLAGS if a[0][0] in (
    "--max_new_tokens", "--temperature", "--seed", "--device")] + [
    (["--prompt_seed", "-3"], "--prompt_seed=-3"), (["--samples", "0"], "--samples=0"),
    (["--batch_size", "0"], "--batch_size=0")])
def test_align_evaluate_refuses_the_same_flags(tiny_sft_run, capsys, args, message):
    assert message in refused(align_evaluate_main, [f"sft={tiny_sft_run[1]}", "--n", "2", *args], capsys)


@pytest.mark.parametrize("args, message", [a for a in BAD_FLAGS if a[0][0] in (
    "--max_new_tokens", "--temperature", "--seed", "--device")])
def test_finetune_evaluate_refuses_the_same_flags(tiny_sft_run, capsys, args, message):
    assert message in refused(finetune_evaluate_main, ["--run", tiny_sft_run[1], "--n", "2", *args], capsys)


@pytest.mark.parametrize("sampling, message", [
    ({"top_p": 0.0}, "top_p=0.0"), ({"top_k": -2}, "top_k=-2"), ({"temperature": -0.5}, "temperature=-0.5"),
])
def test_the_library_refuses_them_too(sampling, message):
    model = Transformer(ModelConfig(vocab_size=50, d_model=16, n_layers=1, n_heads=2)).eval()
    with pytest.raises(ValueError, match=message):
        model.generate(torch.zeros(1, 3, dtype=torch.long), 4, **sampling)
    with pytest.raises(ValueError, match="at least one token"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), 4)


def test_a_closed_output_pipe_ends_generate_quietly(tiny_sft_run):
    """`python -m train.generate ... | head -c 1`: the reader leaves after one byte; no BrokenPipeError traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "train.generate", "--run", str(tiny_sft_run[0]), "--num_samples",
                             "20", "--max_new_tokens", "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(1)
    proc.stdout.close()  # the reader leaves
    _, err = proc.communicate(timeout=300)
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()[-2000:]
    assert proc.returncode in (0, 1), err.decode()[-2000:]
