"""Alignment sweeps: the ablation runner (train/ablate) over alignment methods from one SFT run. An ablation file
(sweep) names its runs and their stages (stages); what they share is made once (prepare); each run trains and is
scored by reward and KL (scores), and the variants are compared with paired statistics (report).
`python -m align.ablate --config FILE`."""
