"""Inbox: the chat of each update, and an index to prune handled updates.

``inbox.chat_key`` lets a webhook worker find a chat's earlier updates that another worker
received, so one chat stays in order across workers. Pending rows get it from their stored
payload; handled rows keep NULL (nothing looks them up by chat). ``ix_inbox_done`` becomes
``(done, received_at)``, which serves the same lookups and the pruning of old handled rows.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_inbox = sa.table(
    "inbox",
    sa.column("id", sa.Integer),
    sa.column("payload", sa.Text),
    sa.column("done", sa.Boolean),
    sa.column("chat_key", sa.String(128)),
)


def _chat_of(payload: str) -> str | None:
    """The chat id of a stored Telegram update (message, edited message, channel post...)."""
    try:
        update = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(update, dict):
        return None
    for value in update.values():
        if isinstance(value, dict) and isinstance(value.get("chat"), dict) and "id" in value["chat"]:
            return str(value["chat"]["id"])
    return None


def upgrade() -> None:
    op.add_column("inbox", sa.Column("chat_key", sa.String(128), nullable=True))
    bind = op.get_bind()
    pending = bind.execute(sa.select(_inbox.c.id, _inbox.c.payload).where(_inbox.c.done.is_(False))).all()
    for row_id, payload in pending:
        chat_key = _chat_of(payload)
        if chat_key is not None:
            bind.execute(sa.update(_inbox).where(_inbox.c.id == row_id).values(chat_key=chat_key))
    op.create_index("ix_inbox_platform_chat_key_done", "inbox", ["platform", "chat_key", "done"])
    op.drop_index("ix_inbox_done", "inbox")
    op.create_index("ix_inbox_done_received_at", "inbox", ["done", "received_at"])


def downgrade() -> None:
    op.drop_index("ix_inbox_done_received_at", "inbox")
    op.create_index("ix_inbox_done", "inbox", ["done"])
    op.drop_index("ix_inbox_platform_chat_key_done", "inbox")
    with op.batch_alter_table("inbox") as batch:  # SQLite drops a column by copying the table
        batch.drop_column("chat_key")
