"""Models built in code whose sinks are known by construction (``testbed:NAME`` model sources).

``testbed:planted`` is the planted-sink ``Qwen2ForCausalLM`` of :mod:`.planted`,
``testbed:planted-llama`` the same weights as a ``LlamaForCausalLM``. Each is built once (well
under a second) and cached as an ordinary HF folder under
``$INTERVENTIONS_CACHE/testbed/`` (default ``~/.cache/interventions/testbed/``), named
``<name>-v<version>-seed0`` so a change of the planted design never reuses a stale folder.

The noisy negatives (:mod:`.noisy`, ``testbed:noisy-h1`` ...) take a weight seed after ``@seed``
(``testbed:noisy-h1@seed3``; default 0), so calibration can draw new weights per simulated run.
"""

from __future__ import annotations

import os
from pathlib import Path

from interventions.errors import UserError

TESTBEDS = {"planted": "qwen2", "planted-llama": "llama"}
"""Testbed name -> architecture of the planted model."""


def cache_root() -> Path:
    """``$INTERVENTIONS_CACHE`` if set, else ``~/.cache/interventions``."""
    env = os.environ.get("INTERVENTIONS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "interventions"


def testbed_folder(name: str) -> Path:
    """The HF folder of testbed ``name``, building it on first use."""
    from .negative import NEGATIVE_VERSION, NEGATIVES, build_negative
    from .noisy import NOISIES, build_noisy, noisy_folder_name
    from .positive import POSITIVE_VERSION, POSITIVES, build_positive

    base, _, seed_part = name.partition("@seed")
    if base in NOISIES:  # noisy negatives (noisy.py): the edit moves activations, the claim is still false
        if seed_part and not seed_part.isdigit():
            raise UserError(f"testbed {name!r}: the weight seed after @seed must be a whole number "
                            f"(e.g. testbed:{base}@seed3)", field="model")
        folder = cache_root() / "testbed" / noisy_folder_name(base, int(seed_part or 0))
        if not (folder / "truth.json").is_file():
            build_noisy(folder, base, seed=int(seed_part or 0))
        return folder
    if name in NEGATIVES:  # negative controls (negative.py): one hypothesis false by construction
        folder = cache_root() / "testbed" / f"{name}-v{NEGATIVE_VERSION}-seed0"
        if not (folder / "truth.json").is_file():
            build_negative(folder, name, seed=0)
        return folder
    if name in POSITIVES:  # positive controls (positive.py): a hypothesis true by construction
        folder = cache_root() / "testbed" / f"{name}-v{POSITIVE_VERSION}-seed0"
        if not (folder / "truth.json").is_file():
            build_positive(folder, name, seed=0)
        return folder
    if name not in TESTBEDS:
        raise UserError(f"unknown testbed {name!r}; known: {', '.join([*TESTBEDS, *NEGATIVES, *NOISIES, *POSITIVES])}",
                        field="model")
    from .planted import PLANTED_VERSION, build_planted

    folder = cache_root() / "testbed" / f"{name}-v{PLANTED_VERSION}-seed0"
    if not (folder / "truth.json").is_file():
        build_planted(folder, arch=TESTBEDS[name], seed=0)
    return folder
