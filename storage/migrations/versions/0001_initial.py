"""Initial schema: chats, turns (the ledger), messages (history), usage.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chats",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("platform", sa.String(32), nullable=False),
        sa.Column("chat_key", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("voice_enabled", sa.Boolean, nullable=True),
        sa.Column("speaker", sa.String(128), nullable=True),
        sa.Column("persona", sa.Text, nullable=True),
        sa.Column("video_enabled", sa.Boolean, nullable=True),
        sa.Column("transcript_enabled", sa.Boolean, nullable=True),
        sa.Column("extra", sa.JSON, nullable=False),
        sa.UniqueConstraint("platform", "chat_key", name="uq_chats_platform_key"),
    )
    op.create_table(
        "turns",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("chat_id", sa.Integer, sa.ForeignKey("chats.id", ondelete="CASCADE"), nullable=False),
        sa.Column("message_id", sa.String(128), nullable=False),
        sa.Column("user_key", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.UniqueConstraint("chat_id", "message_id", name="uq_turns_chat_message"),
    )
    op.create_index("ix_turns_state", "turns", ["state"])
    op.create_table(
        "messages",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("chat_id", sa.Integer, sa.ForeignKey("chats.id", ondelete="CASCADE"), nullable=False),
        sa.Column("turn_id", sa.Integer, sa.ForeignKey("turns.id", ondelete="SET NULL"), nullable=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("from_voice", sa.Boolean, nullable=False),
        sa.Column("language", sa.String(32), nullable=True),
        sa.Column("tokens", sa.Integer, nullable=False),
        sa.Column("user_name", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_index("ix_messages_chat_id_id", "messages", ["chat_id", "id"])
    op.create_index("ix_messages_turn_id", "messages", ["turn_id"])
    op.create_table(
        "usage",
        sa.Column("platform", sa.String(32), primary_key=True),
        sa.Column("user_key", sa.String(128), primary_key=True),
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("turns", sa.Integer, nullable=False),
        sa.Column("audio_seconds", sa.Float, nullable=False),
        sa.Column("tokens", sa.Integer, nullable=False),
        sa.Column("tts_chars", sa.Integer, nullable=False),
    )
    op.create_table(
        "inbox",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("platform", sa.String(32), nullable=False),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("done", sa.Boolean, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.UniqueConstraint("platform", "key", name="uq_inbox_platform_key"),
    )
    op.create_index("ix_inbox_done", "inbox", ["done"])


def downgrade() -> None:
    op.drop_index("ix_inbox_done", "inbox")
    op.drop_table("inbox")
    op.drop_table("usage")
    op.drop_index("ix_messages_turn_id", "messages")
    op.drop_index("ix_messages_chat_id_id", "messages")
    op.drop_table("messages")
    op.drop_index("ix_turns_state", "turns")
    op.drop_table("turns")
    op.drop_table("chats")
