"""The agent and marketer consoles: server-rendered pages over the engine's services."""

from web.pages import install

__all__ = ["install"]
