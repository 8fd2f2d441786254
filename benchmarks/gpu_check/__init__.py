"""`make gpu-check`: one prepared check of the GPU path, inside 9 minutes on one H100 (docs/gpu-check.md).

Parts (benchmarks/gpu_check/parts.py): the `gpu`-marked tests, kernel parity included; the demo, 15m and 42m
configs through precision x compile x optimizer, each final loss against the fp32 run's (train_matrix.py);
tokens/s and MFU against Hugging Face Llama, both compiled, at the 15m, 42m and 110m shapes, with peak memory against
`train.estimate` (benchmarks/throughput.py); mixer cost to T = 16k with the kernels (benchmarks/seqlen.py).
"""
