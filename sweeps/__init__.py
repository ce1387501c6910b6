"""Optuna sweeps: search spaces (YAML) and the study runner."""
