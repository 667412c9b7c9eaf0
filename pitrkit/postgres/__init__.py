"""What pitrkit knows of PostgreSQL itself."""
