"""Keys, cards, trust and the sealing code both ends of an exchange share.

Pure functions and small classes; the only I/O is reading and writing key files.
"""

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
