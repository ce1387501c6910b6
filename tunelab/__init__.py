"""tunelab infrastructure: config composition and validation, the run pipeline, tracking."""
