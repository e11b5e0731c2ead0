"""The checks of a study config that need more than the schema: the method registries
(sweep entries), the model adapters (site names per family), GGUF headers and the
downstream task catalog (task names, their data, the hub while offline).

`study_problems` is the one list `actsparse.config.validate` reports: the schema's own
`problems()` first, then these. Checks that read several parts of a valid config (which
models an entry may run on) run only once everything else is sound, so a typo upstream
does not surface as a cascade of follow-on messages.
"""

from __future__ import annotations

from actsparse import gguf_source
from actsparse.downstream.catalog import task_problems
from actsparse.models.adapters import LINEAR_SITES, adapter_for
from actsparse.schema.study import StudyConfig
from actsparse.schema.training import TRAIN_OPERATORS, ScalingCfg, SparseTrainCfg
from actsparse.sweeps import decompose_entries, predictor_entries, sparsify_entries, sweep_problems


def study_problems(cfg: StudyConfig) -> list[tuple[str, str]]:
    """(dotted key, message) for every problem of `cfg`; empty when it is valid."""
    out = cfg.problems() + sweep_problems(cfg) + _scaling_site_problems(cfg.scaling)
    for name, model in cfg.models.items():
        if model.source == "gguf" and model.gguf.path and not model.gguf.problems():
            key = f"models.{name}.gguf.path"
            out += [(key, m) for m in gguf_source.file_problems(model.gguf.path, model.gguf.sha256)]
    if not any(k.startswith("evaluate.") for k, _ in out):  # reads task YAMLs
        out += task_problems(cfg.evaluate)
    if not out:  # needs valid entries and models
        out += _sparsify_model_problems(cfg)
        out += _decompose_model_problems(cfg)
        out += _predictor_model_problems(cfg)
    return out


def sparse_train_site_problems(point: SparseTrainCfg) -> list[tuple[str, str]]:
    """The `sites` of a training-time operator: Spark's at the gate, the others at the
    adapters' linear-input sites."""
    op = TRAIN_OPERATORS.get(point.operator)
    if op is None:
        return []  # the schema reports the name
    allowed = ("gate",) if op.gate_only else LINEAR_SITES
    bad = [x for x in point.sites or [] if x not in allowed]
    if not bad:
        return []
    return [("sites", f"operator {point.operator!r} acts at {', '.join(allowed)}; got {bad}")]


def _scaling_site_problems(scaling: ScalingCfg) -> list[tuple[str, str]]:
    # the main operator's points have no `sites` (every linear input); variants may
    if not scaling.sizes:
        return []
    return [
        (f"scaling.variants.{name}.{k}", m)
        for name, v in scaling.variants.items()
        for lv in v.levels
        for k, m in sparse_train_site_problems(
            ScalingCfg.point_cfg(v.operator, lv, v.sites, v.block)
        )
    ]


def _sparsify_model_problems(cfg: StudyConfig) -> list[tuple[str, str]]:
    """Entries must name models of the study; a trained model's family must have the
    entry's sites (pretrained families are checked when their job loads them)."""
    out = []
    for name, entry in sparsify_entries(cfg.sparsify).items():
        key = f"sparsify.methods.{name}.models"
        for model in entry.models or []:
            if model not in cfg.models:
                out.append((key, f"unknown model {model!r}; models: {', '.join(cfg.models)}"))
        for model in list(cfg.models) if entry.models is None else entry.models:
            family = cfg.family_of(model) if model in cfg.models else None
            if family is None:
                continue
            adapter = adapter_for(family)
            for site in entry.cfg.sites_used():
                try:
                    adapter.check_site(site, f"sparsity method {name!r} on model {model!r}")
                except ValueError as e:
                    out.append((key, f"{e}; restrict the entry with `models:`"))
            out += [
                (key, f"sparsity method {name!r} on model {model!r}: {problem}; restrict the "
                      "entry with `models:`")
                for problem in entry.cfg.family_problems(adapter)
            ]  # fmt: skip
    return out


def _decompose_model_problems(cfg: StudyConfig) -> list[tuple[str, str]]:
    """Decompose entries name models of the study that are not themselves decomposed."""
    out = []
    for name, entry in decompose_entries(cfg.decompose).items():
        for model in entry.models or []:
            m = cfg.models.get(model)
            if m is None or m.source == "decompose":
                out.append((f"decompose.methods.{name}.models",
                            f"{model!r} is not a trained or pretrained model of the study"))  # fmt: skip
    return out


def _predictor_model_problems(cfg: StudyConfig) -> list[tuple[str, str]]:
    """Predictor entries name models of the study."""
    return [
        (f"predictors.methods.{name}.models",
         f"unknown model {model!r}; models: {', '.join(cfg.models)}")
        for name, entry in predictor_entries(cfg.predictors).items()
        for model in entry.models or []
        if model not in cfg.models
    ]  # fmt: skip
