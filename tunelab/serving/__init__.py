"""Exported models: loading, prediction, the MLflow pyfunc and predict.py."""
