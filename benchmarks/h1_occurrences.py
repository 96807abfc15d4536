"""H1 read over every occurrence of the sink tokens, not only the clean sinks: how many sinks zeroing the l_start
MLP output removes, and how many it creates among the same tokens' non-sink occurrences.

    python benchmarks/h1_occurrences.py testbed:noisy-h1@seed7 --traces-limit 30
    python benchmarks/h1_occurrences.py testbed:planted --traces-limit 30
    python benchmarks/h1_occurrences.py .cache/real/smollm2-135m-instruct \\
        --traces ../shared/data/secondary-sinks-paper/aime24_traces_deepseek-r1-distill-qwen-14b.jsonl --max-tokens 256

Why: H1's verdict compares clean sinks, which are selected on the outcome, with a magnitude-matched noise placebo.
Where the l_start MLP pushes near-threshold tokens along the sink direction with a random sign (noisy-h1), the
selected sinks' push is positive on average, and zeroing it loses sinks beyond the placebo. The population claim
("the MLP maps these tokens onto the sink direction") is false there: zeroing the same MLP at the tokens' non-sink
occurrences creates sinks. Counting both arms of that reading separates the two worlds (README, Calibration).
A diagnostic, not a verdict: under a push of mean zero the net change follows the side of the threshold where most
un-pushed cosines lie (above it in noisy-h1, so zeroing creates sinks; a null with most below it would make zeroing
remove sinks), so it is no valid test on its own.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from interventions.pipeline import run_spec  # noqa: E402
from interventions.spec import Spec  # noqa: E402
from interventions.stats.analysis import load_run  # noqa: E402


def occurrence_counts(model: str, *, traces: str = "testbed", limit: int = 30, max_tokens: int | None = None,
                      seed: int = 1, chat_template: bool = False):
    """Per target set (``sinks``: clean secondary sinks, ``others``: the same tokens' non-sink occurrences): the
    number of occurrences, of sinks in the clean run and of sinks after zeroing the l_start MLP output there."""
    data = {"name": "h1_occurrences", "model": model, "traces": traces, "limit": limit, "seed": seed,
            "dtype": "float32", "report": False, "chat_template": chat_template,
            "targets": {"sinks": {"select": "secondary_sinks"}, "others": {"select": "same_token_non_sinks"}},
            "interventions": [{"kind": "zero", "site": "mlp_output", "layer": "l_start",
                               "targets": ["sinks", "others"]}]}
    if max_tokens:
        data["max_tokens"] = max_tokens
    with tempfile.TemporaryDirectory() as tmp:
        result = run_spec(Spec.from_dict(data, base_dir=Path.cwd()), results_root=Path(tmp), progress=False)
        effects = load_run(result.out)["effects"]
    units = (effects.groupby(["target_set", "trace", "position"])
             .agg(was=("clean_lifetime", "max"), now=("lifetime", "max")).reset_index())
    units = units.assign(was=(units["was"].fillna(0) > 0).astype(int), now=(units["now"].fillna(0) > 0).astype(int))
    return units.groupby("target_set").agg(occurrences=("was", "size"), clean_sinks=("was", "sum"),
                                           sinks_after_zeroing=("now", "sum"))


def main(argv: list[str] | None = None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--traces", default="testbed")
    ap.add_argument("--traces-limit", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--chat-template", action="store_true")
    args = ap.parse_args(argv)
    table = occurrence_counts(args.model, traces=args.traces, limit=args.traces_limit, max_tokens=args.max_tokens,
                              chat_template=args.chat_template)
    print(table.to_string())
    net = int((table["sinks_after_zeroing"] - table["clean_sinks"]).sum())
    print(f"net change in sinks over all occurrences: {net:+d} of {int(table['occurrences'].sum())}")
    return table


if __name__ == "__main__":
    main()
