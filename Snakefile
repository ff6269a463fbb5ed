# CLIP-ES: pseudo masks for weakly supervised semantic segmentation from a frozen CLIP.
#
#   snakemake --cores all                              # the offline demo (config/config.yaml)
#   snakemake --cores all --configfile config/voc12.yaml
#   snakemake --profile profiles/slurm --configfile config/voc12.yaml
#
# Stages: prepare dataset -> [tiny CLIP, demo only] -> [prompt selection] -> CAMs + CAA
# (sharded) -> CRF + confidence masks (sharded) -> evaluations -> DeepLabV2 with CGL ->
# predict + evaluate on val -> reports.

from snakemake.utils import min_version

min_version("8.0")


# A bare `snakemake` runs the demo. A config named with --configfile (or by a profile) is
# used alone, filled in by the schema's defaults: it is never merged into the demo's.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


# run by the submitting snakemake process, never sent to a cluster
localrules:
    all,
    variant_config,


include: "workflow/rules/common.smk"
include: "workflow/rules/dataset.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/prompts.smk"
include: "workflow/rules/cams.smk"
include: "workflow/rules/crf.smk"
include: "workflow/rules/segmentation.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        all_targets(),
    default_target: True
