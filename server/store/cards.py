"""Write work for card rotation: announcing our next card, and pinning a peer's.

Each function takes a session inside a write transaction (the group
committer may run several in one commit). The ``peers`` row of an agency
records both directions: the card we pin of it (``signed_card``, and for a
grace period the one it replaced, ``previous_card``), and the card of ours it
pins (``our_card``) with the one being announced to it (``announcing``,
``announcement_id``).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from liaison.keys.card import PeerCard
from liaison.server.store import audit, outbox
from liaison.server.store.audit import AuditKind
from liaison.server.store.models import MessageState, Peer, PeerState
from liaison.server.store.plain import PEERS
from liaison.server.store.records import NoticeRecord


class CardUpdateConflict(Exception):
    """The peer's pin changed while its card update was being checked."""


def _bare(fingerprint: str) -> str:
    return fingerprint.replace(" ", "")


def peers_to_announce(session: Session, sequence: int, *, active: bool = False) -> list[str]:
    """Pinned peers (``active`` ones only, if asked) that pin our card ``sequence - 1``
    and have had no announcement of ``sequence``: the ones it is still to be sent to.

    A peer whose announcement failed or expired keeps ``announcement_id`` (and
    the old card): it is not announced to again; it needs our card out of band.
    """
    query = (
        select(Peer.agency_id)
        .where(Peer.our_card == sequence - 1)
        .where(Peer.announcing.is_(None), Peer.announcement_id.is_(None))
        .order_by(Peer.agency_id)
    )
    if active:
        query = query.where(Peer.state == PeerState.ACTIVE.value)
    return list(session.scalars(query))


def peers_behind(session: Session, sequence: int) -> list[str]:
    """Pinned peers that pin an older card of ours than ``sequence``: they missed an
    announcement, and a card update can no longer reach them."""
    return list(
        session.scalars(
            select(Peer.agency_id).where(Peer.our_card < sequence).order_by(Peer.agency_id)
        )
    )


def queue_announcement(
    session: Session, record: NoticeRecord, *, sequence: int, fingerprint: str, actor: str
) -> bool:
    """Queue the card update ``record`` to its recipient, and note what it announces.

    False (nothing written) if the peer is gone or was announced to meanwhile
    (by the node and ``keys rotate`` at once).
    """
    peer = session.get(Peer, record.recipient)
    if peer is None or record.recipient not in peers_to_announce(session, sequence):
        return False
    outbox.queue(session, record, actor=actor)
    peer.announcing = sequence
    peer.announcement_id = record.message_id
    audit.append(
        session,
        AuditKind.CARD_ANNOUNCED,
        at=record.created_at,
        message_id=record.message_id,
        peer=record.recipient,
        actor=actor,
        envelope_sha256=record.envelope_sha256,
        detail=f"card {sequence} ({_bare(fingerprint)})",
    )
    return True


_ANNOUNCEMENT = select(PEERS.c.announcement_id).where(PEERS.c.agency_id == bindparam("agency"))


def announcement_settled(
    session: Session, *, recipient: str, message_id: str, state: MessageState, at: dt.datetime
) -> None:
    """A delivery to ``recipient`` reached a final state: if it was the announcement
    of our card, the peer now pins that card (DELIVERED), or keeps the one it had."""
    # Nearly every delivery is no announcement: the one column tells (an announcement
    # is queued in a transaction before the one that settles it, so no flush is needed).
    announced = session.connection().scalar(_ANNOUNCEMENT, {"agency": recipient})
    if announced != message_id:
        return
    with session.no_autoflush:
        peer = session.get(Peer, recipient)
    if peer is None or peer.announcement_id != message_id or peer.announcing is None:
        return
    sequence = peer.announcing
    peer.announcing = None
    if state is MessageState.DELIVERED:
        peer.announcement_id = None
        peer.our_card = sequence
        kind, detail = AuditKind.CARD_ACCEPTED_BY_PEER, f"card {sequence}"
    else:
        kind = AuditKind.CARD_ANNOUNCEMENT_FAILED
        detail = (
            f"card {sequence} {state.value}; the peer still pins card {peer.our_card} and "
            "needs the new card out of band"
        )
    audit.append(session, kind, at=at, message_id=message_id, peer=recipient, detail=detail)


def pending_announcements(session: Session) -> list[str]:
    """Active peers whose announcement of our card has not settled yet.

    A revoked peer's announcement is held with its other messages; it does not
    hold back the end of a rotation (the peer gets it if reinstated in time).
    """
    rows = session.scalars(
        select(Peer.agency_id)
        .where(Peer.announcing.is_not(None), Peer.state == PeerState.ACTIVE.value)
        .order_by(Peer.agency_id)
    )
    return list(rows)


def apply_card_update(
    session: Session,
    *,
    card: PeerCard,
    replaced: bytes,
    replaced_fingerprint: str,
    grace_until: dt.datetime,
    message_id: str,
    at: dt.datetime,
) -> None:
    """Pin ``card``, received in a verified card update, in place of ``replaced``.

    The replaced card stays trusted beside it until ``grace_until``. Raises
    ``CardUpdateConflict`` (nothing written) if the pin changed meanwhile.
    """
    peer = session.get(Peer, card.agency_id)
    if peer is None or peer.signed_card != replaced:
        raise CardUpdateConflict(f"the pinned card of {card.agency_id} changed meanwhile")
    peer.previous_card = replaced
    peer.previous_until = grace_until
    peer.signed_card = card.signed_card
    peer.name = card.name
    peer.endpoint = card.endpoint
    peer.tls_fingerprint = card.tls_fingerprint
    peer.added_at = at
    audit.append(
        session,
        AuditKind.PEER_CARD_UPDATED,
        at=at,
        message_id=message_id,
        peer=card.agency_id,
        detail=f"card {_bare(replaced_fingerprint)} replaced by card {card.sequence} "
        f"{_bare(card.fingerprint)}; the old one is trusted until {grace_until.isoformat()}",
    )
