"""Fine-tuning methods: one LightningModule per method on the shared `FineTuneModule`."""
