"""Rules: the marketer rule language (parser, validator, pure-Python evaluator).

The public names are those of ``rules.language``.
"""

from rules import language
from rules.language import *  # noqa: F403

__all__ = language.__all__
