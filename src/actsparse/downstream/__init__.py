"""Downstream accuracy: zero-shot tasks through lm-evaluation-harness on each variant.

`catalog` resolves and checks the names a study lists (offline, at planning), `lastword`
builds the study corpus's own task, `harness` runs tasks on a model in memory.
"""
