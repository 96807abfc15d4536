"""Intervention kinds. Each module holds the pyvene intervention and a plain-torch oracle
(``reference_hook``) the tests compare it against."""

from . import attention_mask, mean_swap, scale, zero

PYVENE_KINDS = {"zero": zero, "scale": scale, "mean_swap": mean_swap}
ALL_KINDS = {**PYVENE_KINDS, "attention_mask": attention_mask}

__all__ = ["ALL_KINDS", "PYVENE_KINDS"]
