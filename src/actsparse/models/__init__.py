"""Model families: where each Hugging Face architecture keeps its blocks and linear layers,
how tiny models are built here, and the one loader every stage uses.

The loader (and so `transformers`) is imported on first use: planning a study imports the
adapters and method configs only.
"""

from actsparse.models.adapters import SITES, FamilyAdapter, adapter_for

_LOADER = ("LoadCfg", "default_device", "load_model", "load_model_as", "synchronize")

__all__ = ["SITES", "FamilyAdapter", "adapter_for", *_LOADER]


def __getattr__(name: str):
    if name in _LOADER:
        from actsparse.models import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'actsparse.models' has no attribute {name!r}")
