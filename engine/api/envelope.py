"""The ARM envelope of a scale set: ``tags`` and ``identity``, parsed and rendered.

ARM keeps both with the resource and returns them; a client that sent them and gets
nothing back (Terraform) sees drift. They carry no meaning for upgrades, so the model
keeps them as sent (tags in order, identity type and user-assigned ids), and the
read-only parts Azure adds (``principalId``, ``tenantId``) are derived from the set's
``uniqueId``: stable across reads and replays.
"""

from __future__ import annotations

import uuid
from typing import Any

from engine.api.errors import invalid
from engine.domain.model import Identity

JSON = dict[str, Any]
MAX_TAGS = 50  # ARM's limits for tags on a resource
MAX_TAG_NAME = 512
MAX_TAG_VALUE = 256
_TAG_NAME_FORBIDDEN = set("<>%&\\?/")
IDENTITY_TYPES = ("SystemAssigned", "UserAssigned", "SystemAssigned, UserAssigned", "None")
_TENANT = uuid.UUID("72f988bf-86f1-41af-91ab-2d7cd011db47")  # any fixed value will do


def parse_tags(value: Any) -> tuple[tuple[str, str], ...]:
    """``tags``: a JSON object of strings (absent or null: none)."""
    if value is None:
        return ()
    if not isinstance(value, dict) or len(value) > MAX_TAGS:
        raise invalid("tags", f"must be a JSON object of at most {MAX_TAGS} string values")
    tags = []
    for name, tag in value.items():
        if not name or len(name) > MAX_TAG_NAME or _TAG_NAME_FORBIDDEN & set(name):
            raise invalid("tags", f"tag names are 1-{MAX_TAG_NAME} characters without <>%&\\?/")
        if not isinstance(tag, str) or len(tag) > MAX_TAG_VALUE:
            raise invalid(f"tags.{name}", f"must be a string of at most {MAX_TAG_VALUE} characters")
        tags.append((str(name), tag))
    return tuple(tags)


def parse_identity(value: Any) -> Identity | None:
    """``identity``: its type and, for user-assigned ones, the identities' resource ids."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid("identity", "must be a JSON object")
    fields = {str(k).lower(): v for k, v in value.items()}
    kind = fields.get("type")
    chosen = next(
        (t for t in IDENTITY_TYPES if isinstance(kind, str) and t.lower() == kind.lower()), None
    )
    if chosen is None:
        raise invalid("identity.type", f"must be one of {', '.join(IDENTITY_TYPES)}")
    users = fields.get("userassignedidentities") or {}
    if not isinstance(users, dict) or not all(
        isinstance(k, str) and k.lower().startswith("/subscriptions/") for k in users
    ):
        raise invalid(
            "identity.userAssignedIdentities",
            "must map user-assigned identity resource ids to objects",
        )
    live = tuple(k for k, v in users.items() if v is not None)  # null removes (PATCH)
    if ("UserAssigned" in chosen) != bool(live):
        raise invalid(
            "identity.userAssignedIdentities",
            "is required with identity type UserAssigned, and only with it",
        )
    return Identity(chosen, live)


def render_tags(tags: tuple[tuple[str, str], ...]) -> JSON:
    """``tags`` as ARM returns them (``{}`` when none)."""
    return dict(tags)


def render_identity(identity: Identity, unique_id: str) -> JSON:
    """``VirtualMachineScaleSetIdentity`` with the read-only ids Azure fills in."""
    body: JSON = {"type": identity.type}
    if "SystemAssigned" in identity.type:
        body["principalId"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"principal/{unique_id}"))
        body["tenantId"] = str(_TENANT)
    if identity.user_assigned:
        body["userAssignedIdentities"] = {
            ident: {
                "principalId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"principal/{ident.lower()}")),
                "clientId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"client/{ident.lower()}")),
            }
            for ident in identity.user_assigned
        }
    return body


def patch_tags(merged: JSON, patch: JSON) -> JSON:
    """A PATCH's ``tags`` replace the set's tags (ARM treats tags as one value).

    The JSON merge patch of the rest of the body would merge them key by key; absent
    ``tags`` keep the current ones, ``null`` removes them all.
    """
    for name, value in patch.items():
        if str(name).lower() == "tags":
            merged = {k: v for k, v in merged.items() if k.lower() != "tags"}
            if value is not None:
                merged["tags"] = value
    return merged
