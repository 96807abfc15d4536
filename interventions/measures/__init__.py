"""Measures: what changed between the clean and an intervened forward, per target and layer.

In: clean and edited observations of one trace. Out: effects rows (``compute.py``). The measures a
hypothesis reads are registered in :data:`~interventions.measures.compute.registry.MEASURES`.
"""
