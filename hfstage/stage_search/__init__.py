"""``hfstage search``: per-stage hyperparameter search (docs/search.md).

The stages before the searched one train once (or come from a finished run); every trial is a run folder that
starts from their kept checkpoint and trains the searched stage with values an Optuna sampler picks, pruned at its
evaluations. ``space.py`` parses ``KEY=DIST``; ``settings.py`` the flags and the recipe's ``search:`` block;
``study.py`` is the Optuna side (the only module that imports Optuna); ``runner.py`` runs a search;
``outputs.py`` writes what it leaves (trials.csv, best.yaml, history.png, importance.png).
"""
