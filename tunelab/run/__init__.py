"""One run: the Run object, its LightningModule, resume, signals, scale-out, compare."""
