"""kMaX-DeepLab losses: Hungarian matching, PQ-style, mask-id cross-entropy,
instance discrimination and the auxiliary semantic loss (paper §3.3)."""
