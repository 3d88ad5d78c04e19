"""Alembic environment: runs on the connection `llmos.storage.db.Database` hands it."""

from alembic import context

from llmos.storage.schema import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
# Database.migrate already opened the transaction (and took the migration lock inside it), so
# this is a no-op wrapper that keeps every migration in that one transaction.
with context.begin_transaction():
    context.run_migrations()
