"""Group-chat trigger: does a message address the bot?

In private chats every message does. In groups: a mention, a reply to the bot, an adapter
saying so (e.g. Discord's bot channel), or the bot's name in the text — which for a voice
note is its transcript, so "hey Voicebot, ..." spoken aloud works.
"""

from __future__ import annotations

import re

from bot.messages import IncomingMessage

_WORD = re.compile(r"\w+", re.UNICODE)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def names_bot(text: str, bot_name: str) -> bool:
    """True when ``text`` contains the bot's name, tolerating how speech-to-text splits it.

    "Voicebot", "voice bot" and "Voice-Bot" all match the name "Voicebot".
    """
    wanted = "".join(_words(bot_name))
    if not wanted:
        return False
    words = _words(text)
    for size in (1, 2, 3):
        for start in range(0, len(words) - size + 1):
            if "".join(words[start : start + size]) == wanted:
                return True
    return False


def addresses_bot(message: IncomingMessage, text: str, bot_name: str) -> bool:
    if not message.is_group or message.always_answer:
        return True
    if message.mentioned or message.replied_to_bot:
        return True
    return names_bot(text, bot_name)
