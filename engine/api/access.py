"""What a caller may do (``Access``) and what a route needs (``Role``).

Shared by bearer-token authentication and by requests forwarded between servers, which
carry the access of the client the forwarding server authenticated.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from urllib.parse import quote, unquote

_PLATFORM = "platform"
_SUBSCRIPTIONS = "subscriptions="


class Role(Enum):
    """Who may use a route (declared per method in the route table)."""

    SUBSCRIPTION = "subscription"  # acts inside the subscription named by the path
    PLATFORM = "platform"  # platform-wide: the shared catalog, the clock, ...


@dataclass(frozen=True)
class Access:
    """What an authenticated caller may do: everything (platform), or some subscriptions."""

    subscriptions: frozenset[str] | None = None  # lower-case; None: a platform caller

    @property
    def platform(self) -> bool:
        """May act platform-wide."""
        return self.subscriptions is None

    def allows(self, role: Role, subscription: str | None) -> bool:
        """May this caller use a route of ``role`` in ``subscription`` (from the path)?"""
        if self.subscriptions is None:
            return True
        if role is Role.PLATFORM or subscription is None:
            return False
        return subscription.lower() in self.subscriptions

    def encode(self) -> str:
        """The text a forwarded request carries (``platform`` or ``subscriptions=a,b``)."""
        if self.subscriptions is None:
            return _PLATFORM
        return _SUBSCRIPTIONS + ",".join(quote(s, safe="") for s in sorted(self.subscriptions))

    @classmethod
    def decode(cls, text: str) -> Access:
        """The inverse of ``encode``; ValueError for anything else."""
        if text == _PLATFORM:
            return cls()
        if not text.startswith(_SUBSCRIPTIONS):
            raise ValueError(f"unknown access {text!r}")
        names = [unquote(s).lower() for s in text.removeprefix(_SUBSCRIPTIONS).split(",") if s]
        if not names:
            raise ValueError("a subscription access names no subscription")
        return cls(frozenset(names))
