"""SQLAlchemy 2 models: chats and their settings, the turn ledger, history, usage.

Two tables hold what happened in a chat, on purpose:
- ``turns`` is the ledger of incoming platform messages, unique per (chat, message id), with
  their state (received -> replied -> delivered). It is what makes a redelivered update be
  answered once and a message received before a crash be answered after it. It holds no text.
- ``messages`` is the conversation history the LLM sees. ``/reset`` deletes it; the ledger
  stays, so an old update redelivered after a reset is still not answered twice.
"""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class TurnState(enum.StrEnum):
    RECEIVED = "received"  # stored before any provider call
    REPLIED = "replied"  # the answer text is stored; not yet confirmed delivered
    DELIVERED = "delivered"  # the platform took the reply
    FAILED = "failed"  # a notice was delivered instead of an answer (bad audio, provider down)


class Chat(Base):
    __tablename__ = "chats"
    __table_args__ = (UniqueConstraint("platform", "chat_key", name="uq_chats_platform_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    chat_key: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Per-chat settings; NULL means "use the configured default".
    voice_enabled: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    speaker: Mapped[str | None] = mapped_column(String(128), nullable=True)
    persona: Mapped[str | None] = mapped_column(Text, nullable=True)
    video_enabled: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    transcript_enabled: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    # Adapter-specific settings (e.g. Discord's bot channel), small JSON.
    extra: Mapped[dict] = mapped_column(JSON, default=dict)


class Turn(Base):
    __tablename__ = "turns"
    __table_args__ = (UniqueConstraint("chat_id", "message_id", name="uq_turns_chat_message"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chat_id: Mapped[int] = mapped_column(ForeignKey("chats.id", ondelete="CASCADE"))
    message_id: Mapped[str] = mapped_column(String(128))
    user_key: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16), default=TurnState.RECEIVED.value, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (Index("ix_messages_chat_id_id", "chat_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chat_id: Mapped[int] = mapped_column(ForeignKey("chats.id", ondelete="CASCADE"))
    turn_id: Mapped[int | None] = mapped_column(
        ForeignKey("turns.id", ondelete="SET NULL"), nullable=True, index=True
    )
    role: Mapped[str] = mapped_column(String(16))  # "user" | "assistant"
    content: Mapped[str] = mapped_column(Text)
    from_voice: Mapped[bool] = mapped_column(Boolean, default=False)
    language: Mapped[str | None] = mapped_column(String(32), nullable=True)
    tokens: Mapped[int] = mapped_column(Integer, default=0)
    user_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Usage(Base):
    """What one user consumed on one day, for /stats and daily budgets."""

    __tablename__ = "usage"

    platform: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    turns: Mapped[int] = mapped_column(Integer, default=0)
    audio_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    tokens: Mapped[int] = mapped_column(Integer, default=0)
    tts_chars: Mapped[int] = mapped_column(Integer, default=0)


class InboxItem(Base):
    """A raw platform update, stored before the platform is told it was received.

    Telegram forgets an update once a later ``getUpdates`` confirms it; committing it here
    first means a crash between fetch and answer loses nothing: on start, what is still
    pending is answered. ``key`` is the platform's update id; ``chat_key`` the chat it belongs
    to, so a worker can find a chat's earlier updates that another worker received (revision
    0002; NULL for rows stored before). Done rows are pruned after a while.
    """

    __tablename__ = "inbox"
    __table_args__ = (
        UniqueConstraint("platform", "key", name="uq_inbox_platform_key"),
        Index("ix_inbox_platform_chat_key_done", "platform", "chat_key", "done"),
        Index("ix_inbox_done_received_at", "done", "received_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(128))
    payload: Mapped[str] = mapped_column(Text)
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    chat_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
