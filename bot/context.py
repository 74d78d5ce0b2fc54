"""What the LLM is sent: system prompt, the chat's history within a token budget, the new message.

The prompt is a LangChain ``ChatPromptTemplate`` with a ``MessagesPlaceholder`` fed from
storage (no ``RunnableWithMessageHistory``). Tokens are estimated (about four characters a
token, as Llama tokenizers average on English) so trimming costs no model call.
"""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder

from storage.store import StoredMessage

PROMPT = ChatPromptTemplate.from_messages(
    [("system", "{system}"), MessagesPlaceholder("history"), ("human", "{input}")]
)

MESSAGE_OVERHEAD = 4  # role and separator tokens per message


def estimate_tokens(text: str) -> int:
    return len(text) // 4 + MESSAGE_OVERHEAD


def trim_history(history: Sequence[StoredMessage], budget: int) -> list[StoredMessage]:
    """Keep the newest messages whose tokens fit ``budget``; start on a user message."""
    kept: list[StoredMessage] = []
    used = 0
    for message in reversed(history):
        cost = message.tokens or estimate_tokens(message.content)
        if used + cost > budget:
            break
        kept.append(message)
        used += cost
    kept.reverse()
    while kept and kept[0].role != "user":
        kept.pop(0)
    return kept


def as_langchain(message: StoredMessage, *, group: bool) -> BaseMessage:
    if message.role == "assistant":
        return AIMessage(content=message.content)
    content = message.content
    if group and message.user_name:
        content = f"{message.user_name}: {content}"
    return HumanMessage(content=content)


def build_messages(
    system: str,
    history: Sequence[StoredMessage],
    user_text: str,
    *,
    budget: int,
    group: bool = False,
    user_name: str | None = None,
) -> list[BaseMessage]:
    """The full message list for one LLM call, trimmed to ``budget`` tokens in all."""
    if group and user_name:
        user_text = f"{user_name}: {user_text}"
    remaining = budget - estimate_tokens(system) - estimate_tokens(user_text)
    kept = trim_history(history, max(0, remaining))
    return PROMPT.format_messages(
        system=system,
        history=[as_langchain(m, group=group) for m in kept],
        input=user_text,
    )
