"""The schema of the study config (`conf/`): one dataclass per config group.

This package is the leaf of the layering: it imports nothing from `actsparse`, so every
module above it (data, models, methods, stages, the plan) can import the config types it
needs without pulling in the rest. Each dataclass's `problems()` checks only what it can
see by itself (ranges, cross-field rules, files it names). Checks that need the method
registries, the model adapters or a GGUF header live in `actsparse.validation`; Hydra
composition and the error report live in `actsparse.config`.

- `corpus`: the `data` group (a corpus and its tokenizer);
- `models`: one study model (trained here, pretrained, GGUF or decomposed);
- `training`: training runs, training-time sparsity and the scaling grid;
- `stages`: calibrate, evaluate, the three method sweeps, per-rule cluster resources;
- `study`: the whole study (`StudyConfig`) and `to_dict`, the form config hashes read.
"""
