"""CLIP-ES: pseudo masks for weakly supervised semantic segmentation from a frozen CLIP.

The package holds every algorithm and all I/O of the project; the command-line
entry points in ``scripts/`` and the Snakemake rules in ``workflow/`` only call it.

Modules, one per concept of the method:

- :mod:`clipes.model`     loading CLIP (open_clip names or OpenAI-format files)
- :mod:`clipes.openai_clip` OpenAI-format ViT CLIPs built without importing open_clip
- :mod:`clipes.tokenizer` CLIP's BPE tokenizer, without importing open_clip
- :mod:`clipes.text`      class lists, prompts, background sets, prompt selection
- :mod:`clipes.cam`       preprocessing and softmax-GradCAM (reference / batched)
- :mod:`clipes.affinity`  CAA: Sinkhorn affinity, box masks, refinement
- :mod:`clipes.crf`       background score, dense CRF, confidence masks
- :mod:`clipes.metrics`   confusion-matrix mIoU and the background-power sweep
- :mod:`clipes.datasets`  VOC12, COCO14, custom and synthetic datasets
- :mod:`clipes.io`        atomic file writing, CAM archives, palette PNGs
- :mod:`clipes.manifest`  the files of a dataset, their content digests (standard library)
- :mod:`clipes.sizes`     model input sizes, the CAM stage's memory estimate
- :mod:`clipes.errors`    the one-line input errors
- :mod:`clipes.locks`     a Snakemake lock left by a killed run
"""

__version__ = "0.1.0"
