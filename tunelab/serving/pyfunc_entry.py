"""The MLflow "model from code" file of tunelab's pyfunc: `TunelabModel` wrapping an export."""

from mlflow.models import set_model

from tunelab.serving.mlflow_model import TunelabModel

set_model(TunelabModel())
