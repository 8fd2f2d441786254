"""Learning-rate schedules, by name (`train.schedule`). Contract (`Schedule`): `factor(step, train_cfg)` is the
multiplier of train.lr at optimizer step `step` (a pure function, so resuming at any step is exact)."""

from model.component import Registry
from train.schedules.constant import Constant
from train.schedules.cosine import Cosine
from train.schedules.schedule import Schedule
from train.schedules.wsd import WSD

SCHEDULES = Registry("schedule", Schedule, {"cosine": Cosine, "constant": Constant, "wsd": WSD})
