"""The ablation runner: a sweep file (sweep) becomes matched runs (param_match), launched in parallel or on a cluster
(launch), scored on held-out splits (splits), chosen over a learning-rate grid (grid), compared with paired statistics
(stats) and reported as tables and plots (report, plots). `python -m train.ablate --config FILE`."""
