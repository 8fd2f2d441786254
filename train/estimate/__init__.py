"""Sizes before anything is built: the memory estimate per device (breakdown, `python -m train.estimate`), the
checks of every size that allocates against this machine (memory), and the one resolution of sizes that follow the
data plus the one parameter counter (sizes)."""
