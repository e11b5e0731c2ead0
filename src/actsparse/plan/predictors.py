"""The predictors' jobs: per model and entry a predictors job (labels, training, held-out
scores), and an evaluation with the predicted masks at each level."""

from __future__ import annotations

from functools import cached_property

from actsparse import sweeps
from actsparse.methods.registry import MethodEntry
from actsparse.plan.base import PlanBase
from actsparse.schema.job import JobSpec


class PredictorJobs(PlanBase):
    @cached_property
    def predictor_entries(self) -> dict[str, MethodEntry]:
        return sweeps.predictor_entries(self.cfg.predictors)

    @property
    def predictor_jobs(self) -> list[tuple[str, str]]:
        """(model, entry) of every predictors job, in config order."""
        return [
            (model, name)
            for name, entry in self.predictor_entries.items()
            for model in (self.models if entry.models is None else entry.models)
        ]

    def predictor_levels(self, entry: str) -> list[float]:
        return self.cfg.predictors.levels_of(
            self.predictor_entries[entry], self.cfg.sparsify.levels
        )

    @property
    def predicted_variants(self) -> list[tuple[str, str, float]]:
        """(model, entry, level) of every evaluation with predicted masks."""
        return [
            (model, entry, level)
            for model, entry in self.predictor_jobs
            if self.predictor_entries[entry].impl.evaluated
            for level in self.predictor_levels(entry)
        ]

    def _labels_need_calibration(self, entry: str) -> bool:
        return bool(self.predictor_entries[entry].cfg.reads_statistics())

    def predictors(self, model: str, entry: str) -> JobSpec:
        config = {
            "entry": entry,
            "method": self.predictor_entries[entry].job_config(),
            "levels": self.predictor_levels(entry),
            "window": self.cfg.evaluate.seq_len,
            "load": self._model_load(model),
            "seed": self.cfg.study.seed,
        }
        inputs = {
            "model": self.model_path(model),
            "data": self.data(self.data_variant(model)).out_dir,
        }
        if self._labels_need_calibration(entry):
            inputs["calibration"] = self.calibrate(model).out_dir
        return self._job("predictors", f"{model}.{entry}", config, inputs, model, method=entry)

    def evaluate_predicted(self, model: str, entry: str, level: float) -> JobSpec:
        """The model with predicted masks at `level` (and the oracle at the same level)."""
        pred = self.predictors(model, entry)
        method = {"method": entry, "level": level}
        variant = f"{model}.{entry}.{self.level_tag(level)}"
        return self._evaluate(model, variant, method, {"predictors": pred.out_dir})
