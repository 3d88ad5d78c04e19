"""Alembic migrations of the metadata database, applied programmatically by `Database`."""
