"""The WAL path."""
