"""How reports are shown: one module per format."""
