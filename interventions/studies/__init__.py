"""Studies: the paper's analyses and peer measures built on the pipeline.

MLP origin and PCA (``origin.py``), known answers on real weights, per-head measures, streaming
evaluation, comparison with the paper's detection files and across runs, and the experiment runner
(``experiments.py``) behind ``intervene experiment``.
"""
