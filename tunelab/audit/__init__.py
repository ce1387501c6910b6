"""The `audit.py` command: compose a run's config, build its data and report the audit on it.

The checks themselves are in `tunelab.base.audit`, where the datasets that run them can reach.
"""
