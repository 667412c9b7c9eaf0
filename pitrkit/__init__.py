"""pitrkit: continuous WAL archiving, base backups and point-in-time restore for PostgreSQL."""

__version__ = "0.1.0"
