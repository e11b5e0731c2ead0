"""Model families: where each Hugging Face architecture keeps its blocks and linear layers,
how tiny models are built here, and the one loader every stage uses."""

from actsparse.models.adapters import SITES, FamilyAdapter, adapter_for
from actsparse.models.loader import LoadCfg, default_device, load_model, load_model_as, synchronize

__all__ = [
    "SITES",
    "FamilyAdapter",
    "LoadCfg",
    "adapter_for",
    "default_device",
    "load_model",
    "load_model_as",
    "synchronize",
]
