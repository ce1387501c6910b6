"""The one gate: compose the config, validate it, check the model and the machine."""
