"""voicebot: the conversation core (no platform imports here)."""

__version__ = "0.1.0"
