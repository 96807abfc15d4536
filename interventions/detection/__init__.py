"""Detection: primary sinks (massive activations) and secondary sinks with their levels.

In: one observation per trace (:mod:`interventions.observation`). Out: :class:`~interventions.detection.rules.Sink`
records (``rules.py``: pure rules, default and paper-code) and the ``intervene detect`` folder (``job.py``).
The one definition of a sink's level, (l_start, lifetime) = the longest aligned run, is
:func:`~interventions.detection.rules.sink_level`.
"""
