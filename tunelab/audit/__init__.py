"""The data audit: duplicates, cross-split leaks, label conflicts and errors, lengths, balance.

It works on plain rows (`table.View`): the data families' datamodules build the view of exactly
what would train (`datamodules.audit_view`), `python audit.py` reports on it, and a run's
`data.audit` / `data.drop_*` settings clean it through `hook`. Nothing in tunelab's base imports
this package; it imports no datamodule.
"""
