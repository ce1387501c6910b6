"""The data audit: duplicates, cross-split leaks, label conflicts and errors, lengths, balance.

It works on plain rows (`table.View`): the data families' datamodules build the view of exactly
what would train (`datamodules.audit_view`) and clean it through `hook` as a run's
`data.audit` / `data.drop_*` settings ask; `python audit.py` (`tunelab.audit.cli`) reports on
it. In the base layer because datasets run it; it imports nothing above the base.
"""
