"""Base backups."""
