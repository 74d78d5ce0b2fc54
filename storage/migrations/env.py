"""Alembic environment: runs on the connection handed over by :mod:`storage.migrate`."""

from alembic import context

from storage.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reached when alembic's own CLI is used
    raise SystemExit("Run migrations with `voicebot db upgrade`.")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
