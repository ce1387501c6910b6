"""Task kinds: what the base model predicts, and how it is trained, measured and served.

A task is one config class here (a `tunelab.base.plugin.TaskConfig`) plus one YAML in
`configs/task/` naming it with `_target_`; recipes select it with `task=<name>`.
"""
