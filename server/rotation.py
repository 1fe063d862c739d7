"""Rotating the node's keys, announcing the new card, and retiring the old keys.

Three steps, each safe to repeat after a crash at any instruction:

1. ``rotate_keys`` writes the new keys, the new card and the card update in
   one key-store generation (liaison.keys.keyring), then
2. ``announce`` queues the update, sealed and signed as the card each peer
   pins, to every peer that pins the replaced card and has not had it yet.
   A crash between 1 and 2 leaves peers to announce to; the node runs this
   step at every housekeeping round, and so does the next ``keys rotate``.
3. ``retire_keys`` destroys what is due once every active peer's announcement
   has settled: the old signing and TLS keys at once, the old decryption key
   once every envelope a peer may have sealed to it has expired.

``liaison keys rotate`` runs 1 and 2 (the node need not be running); a
running node notices the new generation, loads it, delivers the
announcements and runs 2 and 3 from its housekeeping.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from liaison.keys.content_types import CARD_UPDATE_CONTENT_TYPE
from liaison.keys.envelope import seal_content
from liaison.keys.keyring import (
    KeyRing,
    Retirement,
    StaleKeyRing,
    retirement,
    retirement_change,
    rotation,
)
from liaison.keys.keystore import KeyEntry
from liaison.keys.storage import StorageKey
from liaison.server.config import Limits
from liaison.server.exchange import card_update_summary, sealed_record
from liaison.server.home import NodeHome
from liaison.server.store import audit, cards, checkpoints
from liaison.server.store.audit import AuditKind
from liaison.server.store.models import Direction
from liaison.server.store.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rotated:
    """What ``rotate_keys`` did."""

    sequence: int
    fingerprint: str
    replaced: list[KeyEntry]
    created: list[KeyEntry]
    announced: list[str]
    # Pinned peers that pin an older card than the one replaced: they missed an
    # announcement and need the new card out of band.
    behind: list[str]


def rotate_keys(
    home: NodeHome,
    store: Store,
    kinds: frozenset[str],
    *,
    storage: StorageKey,
    limits: Limits,
    actor: str,
    now: dt.datetime | None = None,
) -> Rotated:
    """Rotate the keys of ``kinds`` (of ``keyring.ROTATABLE``) and announce the new card.

    Refuses (``KeyStoreError``) while the previous rotation is still being
    announced to an active peer; retires what that rotation left first.
    """
    now = now or dt.datetime.now(dt.UTC)
    assert home.unlocker is not None, "the caller opened the key store"
    ring = home.keyring()
    if retire_keys(home, store, ring, limits, now=now):
        ring = home.keyring()
    plan = rotation(ring, kinds, now=now)
    home.keys.change(home.unlocker, plan.change)
    with store.write() as session:
        # Kept for `audit verify`: the old card's checkpoints stay checkable, through the
        # update, after its keys are destroyed.
        checkpoints.record_cards(
            session,
            [
                (plan.previous.sequence, plan.previous.card.signed_card, None),
                (plan.current.sequence, plan.current.card.signed_card, plan.update),
            ],
        )
        for old, new in zip(plan.replaced, plan.created, strict=True):
            audit.append(
                session,
                AuditKind.KEY_ROTATED,
                at=now,
                actor=actor,
                detail=f"{old.role} key {old.key_id} replaced by {new.key_id} in card "
                f"{plan.current.sequence}; the old one is retiring",
            )
    ring = home.keyring()
    announced = announce(ring, store, storage, limits, actor=actor, now=now)
    with store.read() as session:
        behind = cards.peers_behind(session, ring.current.sequence - 1)
    card = ring.current.card
    return Rotated(
        sequence=card.sequence,
        fingerprint=card.fingerprint,
        replaced=plan.replaced,
        created=plan.created,
        announced=announced,
        behind=behind,
    )


def announce(
    ring: KeyRing,
    store: Store,
    storage: StorageKey,
    limits: Limits,
    *,
    actor: str,
    now: dt.datetime | None = None,
) -> list[str]:
    """Queue the current card's update to every peer still to get it; returns them.

    Each update is sealed to the peer's pinned card and signed with our
    previous card's key, the one the peer pins. Nothing to do unless a
    rotation is under way (``ring.previous``).
    """
    if ring.previous is None or ring.update is None:
        return []
    sequence = ring.current.sequence
    with store.read() as session:
        targets = cards.peers_to_announce(session, sequence)
    if not targets:
        return []
    now = now or dt.datetime.now(dt.UTC)
    ttl = dt.timedelta(days=limits.max_lifetime_days)
    summary = card_update_summary(ring.current.card)
    records = []
    for agency_id in targets:
        pinned = store.pinned_peer(agency_id)
        if pinned is None:
            continue
        sealed = seal_content(
            ring.update,
            content_type=CARD_UPDATE_CONTENT_TYPE,
            sender=ring.previous,
            recipient=pinned.card,
            ttl=ttl,
            now=now,
        )
        records.append(
            sealed_record(
                storage,
                Direction.OUTBOUND,
                sealed.header,
                None,
                content=ring.update,
                envelope=sealed.envelope,
                envelope_sha256=sealed.envelope_sha256,
                summary=summary,
            )
        )
    queued = []
    with store.write() as session:
        for record in records:
            if cards.queue_announcement(
                session,
                record,
                sequence=sequence,
                fingerprint=ring.current.card.fingerprint,
                actor=actor,
            ):
                queued.append(record.recipient)
    return queued


def retire_keys(
    home: NodeHome, store: Store, ring: KeyRing, limits: Limits, *, now: dt.datetime
) -> bool:
    """Destroy or date the retiring keys that are due; True if the key store changed.

    The previous card's keys are due once no active peer is still to get the
    current card or waiting for it (``settled``); a retiring decryption key is
    kept ``max_lifetime_days`` and ``clock_skew_seconds`` past that, then
    destroyed. Audited per key.
    """
    if ring.previous is None and not ring.retiring:
        return False  # the usual case, every housekeeping round: no file or database read
    with store.read() as session:
        unsettled = cards.pending_announcements(session)
        if ring.previous is not None:
            unsettled += cards.peers_to_announce(session, ring.current.sequence, active=True)
    grace = dt.timedelta(days=limits.max_lifetime_days, seconds=limits.clock_skew_seconds)
    plan = retirement(
        home.keys.entries(), ring, settled=not unsettled, now=now, decryption_grace=grace
    )
    forget_previous = ring.previous is not None and not unsettled
    if not plan and not forget_previous:
        return False
    assert home.unlocker is not None
    previous_card = ring.previous.card.signed_card if ring.previous is not None else None
    change = retirement_change(plan, forget_previous=forget_previous, previous_card=previous_card)
    try:
        home.keys.change(home.unlocker, change)
    except StaleKeyRing:
        log.info("the key store changed while keys were being retired; next round")
        return False
    _audit_retirement(store, plan, now)
    for entry in plan.destroyed:
        log.info("destroyed retired %s key %s", entry.role, entry.key_id)
    return True


def _audit_retirement(store: Store, plan: Retirement, now: dt.datetime) -> None:
    with store.write() as session:
        for entry in plan.dated:
            assert entry.retire_after is not None
            audit.append(
                session,
                AuditKind.KEY_RETIRING,
                at=now,
                detail=f"{entry.role} key {entry.key_id} destroyed after "
                f"{entry.retire_after.isoformat()}, when every envelope sealed to it has expired",
            )
        for entry in plan.destroyed:
            audit.append(
                session,
                AuditKind.KEY_DESTROYED,
                at=now,
                detail=f"{entry.role} key {entry.key_id} destroyed (removed from the key store)",
            )
