"""Spec fragments shared by the kind tests (the planted model and its own traces)."""

PLANTED_BASE = {
    "name": "kind_check", "model": "testbed:planted", "traces": "testbed", "limit": 2, "dtype": "float32",
    "report": False,
    "targets": {"sinks": {"select": "secondary_sinks"}, "weak": {"select": "tokens", "tokens": [" ~"]},
                "primary": {"select": "primary_sinks"}, "ctrl": {"select": "matched_controls", "match": "sinks"}},
}
