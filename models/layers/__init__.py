"""Implementation of the custom layers, one module per concept (timm ``layers/`` layout).

Import the layers from :mod:`models.custom_layers` (the public API); this package holds, per layer,
the pure forward and backward functions (``*_fwd`` / ``*_bwd``), the thin ``autograd.Function``
that calls them and the thin ``nn.Module``.
"""
