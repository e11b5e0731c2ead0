# The study DAG. Thin by design: the config is composed (Hydra, conf/) and planned
# (actsparse.plan) in workflow/rules/common.smk; the stage rules (workflow/rules/stages.smk,
# data.smk) each run `python -m actsparse.stages.<stage>` on one planned job.
#
#   snakemake -c2                                  # the quickstart study (default)
#   snakemake -c2 --config experiment=smoke        # another preset (conf/experiment/)
#   snakemake -c2 --config 'overrides=[train.steps=100]'   # any key (Hydra override syntax)
#   snakemake -c2 --config 'train={steps: 100}'            # the same, as a nested mapping
#
# Output tree (<root> = <study.output_root>/<study.name>, e.g. data/quickstart):
#   <root>/import_gguf/<model>-<hash>/   model/ (save_pretrained of a GGUF file), gguf.json
#   <root>/data/<corpus>[.<model>]-<hash>/  tokenizer/, tokens/*.npy, manifest.parquet, corpus.json
#                  (.<model>: a checkpoint's corpus, read with its own tokenizer)
#   <root>/train/<model>-<hash>/          model/ (save_pretrained), loss_curve.parquet/.png
#   <root>/calibrate/<model>-<hash>/      channel_stats/, histograms/, gram/ (per layer), linears.parquet
#   <root>/data/<eval corpus>-<hash>/     the same for each eval_data corpus (study tokenizer)
#   <root>/decompose/<model>.<entry>.r<pct>-<hash>/  model/ (+ lowrank.json), decomposition.parquet
#   <root>/allocate/<model>.<entry>-<hash>/  allocations.parquet (an entry's allocation search,
#                  e.g. TEAL's greedy walk, for all of its levels)
#   <root>/sparsify/<model>.<entry>.s<pct>-<hash>/  allocation.parquet, sparsity.json
#   <root>/predictors/<model>.<entry>-<hash>/  predictors.json, weights/, predictor_metrics.parquet
#                  (hotcold: neuron_frequency.parquet, hotcold.parquet)
#   <root>/evaluate/<model>.dense-<hash>/, <model>.<entry>.s<pct>-<hash>/  (+ achieved_sparsity.parquet),
#                  <model>.<entry>.r<pct>-<hash>/  (a decomposition, against the model it came from),
#                  <model>.<predictor entry>.s<pct>-<hash>/  (predicted masks; the oracle beside)
#   <root>/scaling/train/<size>.<precision>[.<variant>].s<pct>-<hash>/  a scaling-grid point:
#                  model/, loss_curve.parquet, sparse_training.json, achieved_sparsity.parquet
#   <root>/scaling/fit-<hash>/            scaling_points/_fit/_compare.parquet, plots
#   <root>/summary.parquet                every job's metrics.parquet, long format
#   <root>/report/index.html              plots and the leaderboard
#   <root>/logs/, <root>/benchmarks/      one log and one Snakemake benchmark per job
# Every job folder also holds config.yaml (its resolved config slice: the canonical
# record), metrics.parquet and mlflow_run_id. <hash> is the hash of that slice.

from snakemake.utils import min_version

min_version("9.0")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/stages.smk"
include: "workflow/rules/summary.smk"
include: "workflow/rules/report.smk"


onsuccess:
    print(where_results_are())


localrules:
    all,
    summary,
    report,


rule all:
    default_target: True
    input:
        PLAN.summary_path,
        f"{ROOT}/report",
