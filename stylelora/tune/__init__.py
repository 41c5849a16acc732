"""Choosing hyper-parameters: `suggest` (measured rules, no training) and `search` (an optuna study)."""
