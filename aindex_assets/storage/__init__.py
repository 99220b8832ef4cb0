"""Object store (local folder or S3) and the metadata catalog (SQLAlchemy + Alembic)."""
