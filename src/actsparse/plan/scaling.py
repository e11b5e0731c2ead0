"""The sparse-training grid's jobs: one train job per size, precision, variant and level,
and the scaling-law fit over all of them."""

from __future__ import annotations

from actsparse.plan.base import PlanBase
from actsparse.schema.job import JobSpec
from actsparse.schema.study import to_dict
from actsparse.schema.training import TRAIN_OPERATORS, SparseTrainCfg


class ScalingJobs(PlanBase):
    @staticmethod
    def precision_tag(precision: str) -> str:
        """'b1.58' -> 'b158' (in variant names)."""
        return precision.replace(".", "")

    @property
    def grid_points(self) -> list[tuple[str, str, str, float]]:
        """(size, precision, variant, level) of every scaling-grid train job: the fitted
        grid (variant '') in config order, then each extra variant's points."""
        sc = self.cfg.scaling
        out = [(z, p, "", lv) for z in sc.sizes for p in sc.precisions for lv in sc.levels]
        for name, v in sc.variants.items():
            sizes = list(sc.sizes) if v.sizes is None else v.sizes
            out += [(z, p, name, lv) for z in sizes for p in v.precisions for lv in v.levels]
        return out

    def grid_variant(self, size: str, precision: str, variant: str, level: float) -> str:
        parts = [size, self.precision_tag(precision), *([variant] if variant else [])]
        return ".".join([*parts, self.level_tag(level)])

    def grid_train(self, size: str, precision: str, variant: str, level: float) -> JobSpec:
        """One point of the scaling grid: a tiny model trained with the operator at `level`
        (dense at level 0) and `precision`; outputs under `<root>/scaling/train/`."""
        sc = self.cfg.scaling
        op = sc.variants[variant] if variant else sc
        operator = op.operator if level else "none"
        unused = SparseTrainCfg()  # a key the operator ignores keeps its default: no rerun
        sparse = {
            "operator": operator,
            "level": level,
            # the fitted grid acts at every projection input
            "sites": op.sites if variant and operator != "none" else unused.sites,
            "rescale": op.rescale if TRAIN_OPERATORS[operator].rescales else unused.rescale,
            "block": op.block if TRAIN_OPERATORS[operator].groups_sequences else unused.block,
            "precision": precision,
        }
        config = {
            "model": {
                "source": "train",
                "family": sc.family,
                "arch": {**to_dict(sc.sizes[size]), "hidden_act": sc.hidden_act},
            },
            "train": to_dict(sc.train),
            "sparse": sparse,
            "seed": self.cfg.study.seed,
        }
        inputs = {"data": self.data(self.cfg.data.name).out_dir}
        variant_name = self.grid_variant(size, precision, variant, level)
        return self._job("train", variant_name, config, inputs, folder="scaling/train")

    def scaling_fit(self) -> JobSpec:
        """The scaling-law fit over every grid point (`<root>/scaling/fit-<hash>/`)."""
        points, inputs = {}, {}
        for size, precision, variant, level in self.grid_points:
            job = self.grid_train(size, precision, variant, level)
            points[job.variant] = {
                "size": size, "precision": precision, "variant": variant, "level": level,
            }  # fmt: skip
            inputs[f"point.{job.variant}"] = job.out_dir
        config = {
            "fit": to_dict(self.cfg.scaling.fit),
            "operator": self.cfg.scaling.operator,
            "points": points,
            "seed": self.cfg.study.seed,
        }
        return self._job("scaling", "fit", config, inputs, folder="scaling")

    @property
    def scaling_fit_dir(self) -> str | None:
        """The scaling-law fit's folder; None when the study has no scaling grid."""
        return self.scaling_fit().out_dir if self.cfg.scaling.sizes else None
