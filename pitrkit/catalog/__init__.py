"""The catalog."""
