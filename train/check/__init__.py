"""Is my loss normal? Seed-banded reference curves and a check of a run against them.

    bands.py     band files (format, reading with the input checks, the keys that identify a recipe, matching)
    verdict.py   a run's curve against its band: inside, better, worse from step N, diverged, stuck at unigram
    plot.py      the run drawn over its band (check.png)
    record.py    `python -m train.check.record`: train a recipe's seeds and write its band file
    live.py      the training callback that warns once per metric when a run leaves its band
    __main__.py  `python -m train.check --run runs/NAME` (`tinystack check runs/NAME`)
"""
