"""The archive and what it is stored on."""
