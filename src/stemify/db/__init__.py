"""The database every store shares: one engine, its tables and their Alembic migrations."""
