# CLIP-ES workflow: the rules live in workflow/Snakefile (the layout of the Snakemake
# workflow catalog); this file lets `snakemake` run from the repository root.
#   snakemake --cores all                                  # the offline demo
#   snakemake --cores all --configfile config/voc12.yaml


include: "workflow/Snakefile"


# `include:` keeps the includer's default target, and this file has no rule of its own:
# make the workflow's `all` the target of a bare `snakemake`.
workflow.default_target = "all"
