"""Choosing hyper-parameters by search: an optuna study over training settings, its results, and the judge objective."""
