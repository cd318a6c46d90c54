"""The kMaX transformer decoder (k-means cross-attention, paper §3.2)."""
