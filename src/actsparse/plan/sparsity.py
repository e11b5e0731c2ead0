"""The sparsity sweep's jobs: per model, entry and level a sparsify job and its evaluation,
and one allocate job per model and entry whose method searches its allocation once for
all of its levels (TEAL's greedy walk)."""

from __future__ import annotations

from functools import cached_property

from actsparse import sweeps
from actsparse.methods.registry import MethodEntry
from actsparse.plan.base import PlanBase
from actsparse.schema.job import JobSpec


class SparsityJobs(PlanBase):
    @staticmethod
    def level_tag(level: float) -> str:
        """0.25 -> 's25', 0.875 -> 's87.5' (in variant names)."""
        return f"s{round(level * 100, 4):g}"

    @property
    def sparse_variants(self) -> list[tuple[str, str, float]]:
        """(model, entry, level) of every sparsified variant, in config order."""
        sp = self.cfg.sparsify
        out = []
        for name, entry in self.sparsity_entries.items():
            for model in self.models if entry.models is None else entry.models:
                out += [(model, name, level) for level in sp.levels_of(entry)]
        return out

    def sparse_variant(self, model: str, entry: str, level: float) -> str:
        return f"{model}.{entry}.{self.level_tag(level)}"

    @cached_property
    def sparsity_entries(self) -> dict[str, MethodEntry]:
        """entry name -> the entry, parsed once."""
        return sweeps.sparsify_entries(self.cfg.sparsify)

    def _sparsity_inputs(self, model: str, entry: str) -> dict[str, str]:
        inputs = {"model": self.model_path(model)}
        e = self.sparsity_entries[entry]
        if e.impl.needs_calibration:
            inputs["calibration"] = self.calibrate(model).out_dir
        if e.method_instance().needs_tokens_for(e.cfg):
            # sequential calibration's tokens: the same corpus as the statistics
            inputs["data"] = self.calibration_data(model).out_dir
        return inputs  # top-K rules read no statistics or tokens

    def sparsify(self, model: str, entry: str, level: float) -> JobSpec:
        config = {
            "entry": entry,
            "method": self.sparsity_entries[entry].job_config(),
            "level": level,
            "window": self.cfg.evaluate.seq_len,
            "load": self._model_load(model),
            "seed": self.cfg.study.seed,
        }
        inputs = self._sparsity_inputs(model, entry)
        if level > 0.0 and self._searches_allocation(entry):
            inputs["allocation"] = self.allocate(model, entry).out_dir
        variant = self.sparse_variant(model, entry, level)
        return self._job("sparsify", variant, config, inputs, model, method=entry)

    def _searches_allocation(self, entry: str) -> bool:
        e = self.sparsity_entries[entry]
        return bool(e.method_instance().searches_allocation(e.cfg))

    @property
    def allocation_searches(self) -> list[tuple[str, str]]:
        """(model, entry) of every allocate job: one search per entry that searches its
        per-module levels for all of its levels at once (TEAL's greedy walk)."""
        return list(
            dict.fromkeys(
                (model, entry)
                for model, entry, level in self.sparse_variants
                if level > 0.0 and self._searches_allocation(entry)
            )
        )

    def allocate(self, model: str, entry: str) -> JobSpec:
        """The allocation search of `entry` on `model`, for each of its nonzero levels."""
        levels = self.cfg.sparsify.levels_of(self.sparsity_entries[entry])
        config = {
            "entry": entry,
            "method": self.sparsity_entries[entry].job_config(),
            "levels": sorted(lv for lv in levels if lv > 0.0),
            "window": self.cfg.evaluate.seq_len,
            "load": self._model_load(model),
            "seed": self.cfg.study.seed,
        }
        inputs = self._sparsity_inputs(model, entry)
        return self._job("allocate", f"{model}.{entry}", config, inputs, model, method=entry)

    def evaluate_sparse(self, model: str, entry: str, level: float) -> JobSpec:
        """A sparsified variant, with the dense model (same weights) as fidelity reference."""
        sparsify = self.sparsify(model, entry, level)
        method = {"method": entry, "level": level}
        return self._evaluate(model, sparsify.variant, method, {"sparsity": sparsify.out_dir})
