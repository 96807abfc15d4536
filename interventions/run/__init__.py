"""Run: a spec's conditions against the clean model, trace by trace, into a run folder.

In: a validated :class:`~interventions.spec.Spec`. Out: the run folder (``effects.parquet``,
``clean_sinks.jsonl``, per-layer tables, ``manifest.json``). ``job.py`` is the orchestrator (named
phases), ``trace.py`` one trace, ``execute.py`` the forwards with prefix reuse, ``tables.py`` the
tables it writes, ``distributed.py`` data-parallel ranks.
"""
