"""Inference modes, kept in a module without heavy imports so the CLI starts fast.

- "exact": window by window on MONAI's SlidingWindowInferer (the poster's inference).
- "fast": one dense pass; approximate. Not the default: its agreement with exact mode is below
  the 0.95 Pearson bar on real images (README, "Exact and fast modes").
"""

MODES = ("exact", "fast")
DEFAULT_MODE = "exact"
