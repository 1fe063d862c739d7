"""A node's keys across rotations: the current card, the one before it, old decryption keys.

A rotation (``rotation``) writes, in one key-store generation, new keys for
what is rotated, the new card (``card.bin``), the card it replaces
(``previous-card.bin``) and the card update that links the two
(``card-update.bin``, liaison.keys.rotation). The keys it replaces become
``retiring``:

- the previous card's signing and TLS keys stay while the update is being
  announced: a peer that does not yet pin the new card still gets envelopes,
  receipts and a TLS certificate it can verify (``KeyRing.for_sequence``);
  once every announcement has settled they are destroyed;
- a replaced decryption key stays until every envelope a peer may have sealed
  to it has expired: its ``retire_after`` is set when the announcements settle,
  to that moment plus the longest envelope lifetime and the clock skew.

``retirement`` makes the generation that destroys what is due. A destroyed
key's file is gone; its manifest entry stays, so ``keys list`` shows the history.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, mlkem, x25519

from liaison.keys.card import parse_card
from liaison.keys.certs import IssuedCertificate, self_signed_peer_certificate
from liaison.keys.errors import CardError, KeyStoreError
from liaison.keys.identity import (
    CARD_FILE,
    CARD_UPDATE_FILE,
    KEM_MLKEM,
    KEM_X25519,
    MLDSA65,
    PREVIOUS_CARD_FILE,
    SIGNING,
    TLS,
    NodeIdentity,
    identity_keys,
    load_identity,
    load_private_key,
)
from liaison.keys.ids import mldsa65_key_id, tls_name
from liaison.keys.keystore import (
    ACTIVE,
    DESTROYED,
    RETIRING,
    KeyChange,
    KeyEntry,
    NewKey,
    OpenedKeys,
)
from liaison.keys.rotation import make_card_update
from liaison.v1 import envelope_pb2

# What ``keys rotate`` can rotate, and the key-store roles of each.
ROTATABLE = {
    "signing": frozenset({SIGNING, MLDSA65}),
    "encryption": frozenset({KEM_MLKEM, KEM_X25519}),
    "tls": frozenset({TLS}),
}
# Keys of the previous card that go as soon as every announcement has settled.
_SETTLED_ROLES = frozenset({SIGNING, MLDSA65, TLS})


@dataclass(frozen=True)
class KeyRing:
    """Every key the node holds, for the card each belongs to.

    ``previous`` is the card before ``current`` while its signing and TLS
    keys are kept (a rotation not yet settled). ``decryption_keys`` holds the
    current decryption key and every retiring one, by encryption key id.
    """

    current: NodeIdentity
    generation: str
    previous: NodeIdentity | None = None
    decryption_keys: dict[str, hpke.MLKEM768X25519PrivateKey] = field(default_factory=dict)
    # The SignedCardUpdate from ``previous`` to ``current``, while ``previous`` is kept.
    update: bytes | None = None
    # True while any key is retiring: something may become due for destruction.
    retiring: bool = False

    @property
    def agency_id(self) -> str:
        return self.current.agency_id

    def for_sequence(self, sequence: int) -> NodeIdentity:
        """The identity a peer that pins our card ``sequence`` can verify.

        The previous card's keys while they are kept, else the current card's.
        """
        if self.previous is not None and sequence == self.previous.sequence:
            return self.previous
        return self.current

    def decryption_key(self, key_id: str) -> hpke.MLKEM768X25519PrivateKey | None:
        return self.decryption_keys.get(key_id)

    @property
    def server_tls(self) -> IssuedCertificate:
        """The certificate the peer listener presents: the previous card's until every
        peer has been told of the new one (one certificate serves every peer)."""
        return (self.previous or self.current).tls


def load_keyring(
    keys: OpenedKeys, *, agency_id: str, name: str, endpoint: str, created_at: dt.datetime
) -> KeyRing:
    """The node's keys from its unlocked key store; raises ``KeyStoreError``.

    A key store that was never rotated has no ``card.bin``: its card is built
    from the keys and the node's configuration, as it always was.
    """
    if keys.has_public(CARD_FILE):
        current = _identity_of(keys, keys.public(CARD_FILE))
    else:
        current = load_identity(
            keys, agency_id=agency_id, name=name, endpoint=endpoint, created_at=created_at
        )
    previous, update = None, None
    if keys.has_public(PREVIOUS_CARD_FILE):
        previous = _identity_of(keys, keys.public(PREVIOUS_CARD_FILE), fallback=current)
        update = keys.public(CARD_UPDATE_FILE)
    return KeyRing(
        current=current,
        generation=keys.generation,
        previous=previous,
        decryption_keys=_decryption_keys(keys),
        update=update,
        retiring=any(entry.state == RETIRING for entry in keys.entries()),
    )


def _identity_of(
    keys: OpenedKeys, signed_card: bytes, *, fallback: NodeIdentity | None = None
) -> NodeIdentity:
    """The identity of one of our own stored cards, from the keys its ids name.

    A previous card's decryption key may be gone before its signing key is
    (never in this order, but a damaged store should not stop the node):
    ``fallback``'s then stands in; it is never used to decrypt (``KeyRing.decryption_keys``).
    """
    try:
        card = parse_card(signed_card)
    except CardError as error:
        raise KeyStoreError(f"the node's own stored card does not verify: {error}") from None
    mldsa65_key, mldsa65_signature = None, b""
    if card.mldsa65_key is not None:
        key_id = mldsa65_key_id(card.mldsa65_key.public_bytes_raw())
        mldsa65_key = load_private_key(
            keys.private(MLDSA65, key_id), mldsa.MLDSA65PrivateKey, MLDSA65
        )
        mldsa65_signature = envelope_pb2.SignedCard.FromString(signed_card).mldsa65_signature
    if keys.holds(KEM_MLKEM, card.encryption_key_id) or fallback is None:
        kem_mlkem = load_private_key(
            keys.private(KEM_MLKEM, card.encryption_key_id), mlkem.MLKEM768PrivateKey, KEM_MLKEM
        )
        kem_x25519 = load_private_key(
            keys.private(KEM_X25519, card.encryption_key_id), x25519.X25519PrivateKey, KEM_X25519
        )
    else:
        kem_mlkem, kem_x25519 = fallback.kem_mlkem, fallback.kem_x25519
    tls_key = load_private_key(
        keys.private(TLS, card.tls_fingerprint), ec.EllipticCurvePrivateKey, TLS
    )
    return NodeIdentity(
        agency_id=card.agency_id,
        name=card.name,
        endpoint=card.endpoint,
        created_at=card.created_at,
        signing_key=load_private_key(
            keys.private(SIGNING, card.signing_key_id), ed25519.Ed25519PrivateKey, SIGNING
        ),
        kem_mlkem=kem_mlkem,
        kem_x25519=kem_x25519,
        tls=IssuedCertificate(tls_key, x509.load_der_x509_certificate(card.tls_certificate)),
        mldsa65_key=mldsa65_key,
        card_mldsa65_signature=mldsa65_signature,
        sequence=card.sequence,
        stored_card=signed_card,
    )


def _decryption_keys(keys: OpenedKeys) -> dict[str, hpke.MLKEM768X25519PrivateKey]:
    found = {}
    for entry in keys.entries():
        if entry.role != KEM_MLKEM or entry.state == DESTROYED:
            continue
        found[entry.key_id] = hpke.MLKEM768X25519PrivateKey(
            load_private_key(
                keys.private(KEM_MLKEM, entry.key_id), mlkem.MLKEM768PrivateKey, KEM_MLKEM
            ),
            load_private_key(
                keys.private(KEM_X25519, entry.key_id), x25519.X25519PrivateKey, KEM_X25519
            ),
        )
    return found


@dataclass(frozen=True)
class Rotation:
    """A rotation ready to write: the new identity, the update, the key-store change."""

    previous: NodeIdentity
    current: NodeIdentity
    update: bytes
    # The keys replaced and their successors, pairwise, by role.
    replaced: list[KeyEntry]
    created: list[KeyEntry]

    def change(self, keys: list[NewKey], public: dict[str, bytes]) -> KeyChange:
        """The generation after the rotation (for ``NodeKeys.change``).

        Applied under the key store's lock to whatever generation is current:
        refuses (``StaleKeyRing``) unless that is still the one the plan was made
        from, so two rotations at once cannot mix their keys.
        """
        stored = public.get(CARD_FILE)
        if PREVIOUS_CARD_FILE in public or (
            stored is not None and stored != self.previous.card.signed_card
        ):
            raise StaleKeyRing("the key store changed meanwhile; run the rotation again")
        replaced = {(entry.role, entry.key_id) for entry in self.replaced}
        kept = [
            NewKey(dataclasses.replace(key.entry, state=RETIRING), key.secret)
            if (key.entry.role, key.entry.key_id) in replaced and key.entry.state == ACTIVE
            else key
            for key in keys
        ]
        roles = frozenset(entry.role for entry in self.created)
        suffix = f"-{self.current.sequence:06d}"
        new = identity_keys(self.current, roles, file_suffix=suffix)
        return KeyChange(
            [*kept, *new],
            {
                **public,
                CARD_FILE: self.current.card.signed_card,
                PREVIOUS_CARD_FILE: self.previous.card.signed_card,
                CARD_UPDATE_FILE: self.update,
            },
        )


def rotation(ring: KeyRing, kinds: frozenset[str], *, now: dt.datetime) -> Rotation:
    """New keys of ``kinds`` (of ``ROTATABLE``), the next card, and the update to it.

    Refuses (``KeyStoreError``) while the previous rotation has not settled:
    an update names the card it replaces, so they are announced one at a time.
    """
    unknown = kinds - ROTATABLE.keys()
    if not kinds or unknown:
        raise ValueError(f"nothing to rotate, or unknown kinds: {sorted(unknown)}")
    if ring.previous is not None:
        raise KeyStoreError(
            f"card {ring.current.sequence} is still being announced to peers; rotate again "
            "once every peer has it (`liaison peers list` shows who has which card)"
        )
    old = ring.current
    changes: dict[str, object] = {
        "sequence": old.sequence + 1,
        "created_at": now.astimezone(dt.UTC).replace(microsecond=0),
        "stored_card": None,
        "card_mldsa65_signature": b"",
    }
    if "signing" in kinds:
        changes["signing_key"] = ed25519.Ed25519PrivateKey.generate()
        if old.mldsa65_key is not None:
            changes["mldsa65_key"] = mldsa.MLDSA65PrivateKey.generate()
    if "encryption" in kinds:
        changes["kem_mlkem"] = mlkem.MLKEM768PrivateKey.generate()
        changes["kem_x25519"] = x25519.X25519PrivateKey.generate()
    if "tls" in kinds:
        changes["tls"] = self_signed_peer_certificate(old.agency_id, tls_name(old.agency_id))
    new = dataclasses.replace(old, **changes)  # type: ignore[arg-type]
    update = make_card_update(
        old.card, new.card.signed_card, signing_key=old.signing_key, mldsa65_key=old.mldsa65_key
    )
    roles = frozenset().union(*(ROTATABLE[kind] for kind in kinds))
    old_entries = {entry.entry.role: entry.entry for entry in identity_keys(old)}
    return Rotation(
        previous=old,
        current=new,
        update=update,
        replaced=[old_entries[role] for role in sorted(roles) if role in old_entries],
        # In the order of ``replaced``: the i-th new key replaces the i-th old one.
        created=sorted((key.entry for key in identity_keys(new, roles)), key=lambda e: e.role),
    )


@dataclass(frozen=True)
class Retirement:
    """What a retirement changes: keys destroyed, decryption keys given a date."""

    destroyed: list[KeyEntry]
    dated: list[KeyEntry]

    def __bool__(self) -> bool:
        return bool(self.destroyed or self.dated)


def retirement(
    entries: list[KeyEntry],
    ring: KeyRing,
    *,
    settled: bool,
    now: dt.datetime,
    decryption_grace: dt.timedelta,
) -> Retirement:
    """What is due to retire now.

    With ``settled`` (every announcement of the current card has settled), the
    previous card's signing and TLS keys are destroyed and its decryption key,
    if replaced, is dated ``now + decryption_grace``. A retiring key whose date
    has passed is destroyed.
    """
    previous = ring.previous
    of_previous: set[tuple[str, str]] = set()
    if settled and previous is not None:
        card = previous.card
        of_previous = {
            (SIGNING, card.signing_key_id),
            (TLS, card.tls_fingerprint),
            (KEM_MLKEM, card.encryption_key_id),
            (KEM_X25519, card.encryption_key_id),
        }
        if card.mldsa65_key is not None:
            of_previous.add((MLDSA65, mldsa65_key_id(card.mldsa65_key.public_bytes_raw())))
    destroyed, dated = [], []
    for entry in entries:
        if entry.state != RETIRING:
            continue
        if entry.retire_after is not None and entry.retire_after <= now:
            destroyed.append(dataclasses.replace(entry, state=DESTROYED))
        elif (entry.role, entry.key_id) in of_previous:
            if entry.role in _SETTLED_ROLES:
                destroyed.append(dataclasses.replace(entry, state=DESTROYED, retire_after=now))
            elif entry.retire_after is None:
                dated.append(dataclasses.replace(entry, retire_after=now + decryption_grace))
    return Retirement(destroyed, dated)


class StaleKeyRing(KeyStoreError):
    """A key-store change was planned from a generation that is no longer current."""


def retirement_change(
    plan: Retirement, *, forget_previous: bool, previous_card: bytes | None = None
) -> Callable[[list[NewKey], dict[str, bytes]], KeyChange]:
    """The ``NodeKeys.change`` function that applies ``plan``.

    With ``forget_previous`` the previous card and the update go too: the
    rotation has settled and nothing signs as the previous card any more.
    ``previous_card`` is the previous card the plan was made with; the change
    refuses (``StaleKeyRing``) if the store moved on meanwhile.
    """
    changed = {(entry.role, entry.key_id): entry for entry in [*plan.destroyed, *plan.dated]}

    def change(keys: list[NewKey], public: dict[str, bytes]) -> KeyChange:
        # Under the key store's lock: the previous card to forget must be the one the
        # plan saw (a rotation in between would have made another one previous).
        if forget_previous and public.get(PREVIOUS_CARD_FILE) != previous_card:
            raise StaleKeyRing("the key store changed meanwhile")
        current_states = {(key.entry.role, key.entry.key_id): key.entry.state for key in keys}
        if any(current_states.get(key) != RETIRING for key in changed):
            raise StaleKeyRing("the key store changed meanwhile")
        kept = []
        for key in keys:
            entry = changed.get((key.entry.role, key.entry.key_id))
            if entry is None or key.entry.state == DESTROYED:
                kept.append(key)
            elif entry.state == DESTROYED:
                kept.append(NewKey(entry, b""))
            else:
                kept.append(NewKey(entry, key.secret))
        if forget_previous:
            public = {
                name: data
                for name, data in public.items()
                if name not in (PREVIOUS_CARD_FILE, CARD_UPDATE_FILE)
            }
        return KeyChange(kept, public)

    return change
