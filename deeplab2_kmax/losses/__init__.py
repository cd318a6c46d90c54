"""kMaX-DeepLab losses (paper §3.3): `loss_terms` (each term of the loss,
one function each), `matching` (Hungarian matching, registered by name) and
`max_deeplab_loss` (`LossSpec`, and `MaXDeepLabLoss`, which composes them)."""
