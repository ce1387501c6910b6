"""Lightning callbacks shared by every run."""
