"""Keys, cards, trust and the sealing code both ends of an exchange share.

Pure functions and small classes; the only I/O is reading and writing key files.

The names below are imported on first use: a program that needs one module of this
package (the CLI reading a constant) does not pay for all of them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from liaison.keys.card import PeerCard, armor_card, dearmor_card, parse_card
    from liaison.keys.envelope import (
        CheckedEnvelope,
        EnvelopeLimits,
        OpenedNotice,
        SealedMessage,
        check_envelope,
        issue_receipt,
        open_checked,
        seal_notice,
        verify_receipt,
    )
    from liaison.keys.errors import (
        CardError,
        EnvelopeRejected,
        KeysError,
        KeyStoreError,
        ReceiptError,
        reason_name,
    )
    from liaison.keys.identity import NodeIdentity, generate_identity, load_identity
    from liaison.keys.trust import TrustStore

_HOMES = {
    **dict.fromkeys(("PeerCard", "armor_card", "dearmor_card", "parse_card"), "card"),
    **dict.fromkeys(
        (
            "CheckedEnvelope",
            "EnvelopeLimits",
            "OpenedNotice",
            "SealedMessage",
            "check_envelope",
            "issue_receipt",
            "open_checked",
            "seal_notice",
            "verify_receipt",
        ),
        "envelope",
    ),
    **dict.fromkeys(
        (
            "CardError",
            "EnvelopeRejected",
            "KeysError",
            "KeyStoreError",
            "ReceiptError",
            "reason_name",
        ),
        "errors",
    ),
    **dict.fromkeys(("NodeIdentity", "generate_identity", "load_identity"), "identity"),
    "TrustStore": "trust",
}


def __getattr__(name: str) -> Any:
    module = _HOMES.get(name)
    if module is None:
        raise AttributeError(f"module 'liaison.keys' has no attribute {name!r}")
    return getattr(importlib.import_module(f"liaison.keys.{module}"), name)


__all__ = [
    "CardError",
    "CheckedEnvelope",
    "EnvelopeLimits",
    "EnvelopeRejected",
    "KeyStoreError",
    "KeysError",
    "NodeIdentity",
    "OpenedNotice",
    "PeerCard",
    "ReceiptError",
    "SealedMessage",
    "TrustStore",
    "armor_card",
    "check_envelope",
    "dearmor_card",
    "generate_identity",
    "issue_receipt",
    "load_identity",
    "open_checked",
    "parse_card",
    "reason_name",
    "seal_notice",
    "verify_receipt",
]
