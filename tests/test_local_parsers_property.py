"""Property: agency cards and credential folders parse or are refused with a reason.

A card comes from a peer by mail or file (``dearmor_card``, ``parse_card``);
a credential folder is handed to an agency system (``ClientCredential.load``,
then ``LiaisonClient``). Inputs are random text and bytes, bit flips of valid
ones, and cards whose fields (timestamps, keys, certificates with drawn
extensions) are drawn and then correctly self-signed, so that everything
after the signature is reached. Each ends as a value or as ``CardError`` /
``KeyStoreError``, never another exception.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, mldsa
from cryptography.x509.oid import ExtensionOID
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import currently_in_test_context, event, example, given
from hypothesis import strategies as st

from liaison.client.api import LiaisonClient
from liaison.keys.card import PeerCard, armor_card, dearmor_card, parse_card, sign_card
from liaison.keys.certs import (
    IssuedCertificate,
    certificate_sha256,
    issue_api_client_certificate,
    local_certificate_authority,
)
from liaison.keys.credentials import CLIENT_KEY_ROLE, ClientCredential
from liaison.keys.errors import CardError, KeyStoreError
from liaison.keys.identity import generate_identity
from liaison.keys.sealed import KdfParams, Passphrase, Unlocker, seal
from liaison.v1 import envelope_pb2
from tests.strategies import (
    agency_ids,
    bit_flips,
    budget,
    changes,
    enum_values,
    is_valid_timestamp,
    texts,
    timestamps,
)

A = generate_identity("MA.DGSN.CCPI", "Agency A", "127.0.0.1:7443")
CARD = envelope_pb2.AgencyCard.FromString(
    envelope_pb2.SignedCard.FromString(A.card.signed_card).card
)
TLS_KEY = ec.generate_private_key(ec.SECP256R1())
MLDSA65_KEY = mldsa.MLDSA65PrivateKey.generate()


def _count(outcome: str) -> None:
    """Outcomes shown by ``--hypothesis-show-statistics``: how deep the inputs reach."""
    if currently_in_test_context():
        event(outcome)


def card_or_error(signed_card: bytes) -> PeerCard | CardError:
    try:
        card = parse_card(signed_card)
    except CardError as error:
        refused = error
    else:
        _count("parsed")
        return card
    # Count by the kind of refusal, without the values the message quotes.
    _count(re.sub(r"'.*'|\d+", "_", str(refused).replace(A.agency_id, "A")).split(":")[0])
    assert str(refused)
    return refused


# --- Cards -----------------------------------------------------------------------------

dns_names = st.one_of(st.just("ma.dgsn.ccpi"), st.from_regex(r"[a-z0-9.-]{1,20}", fullmatch=True))


@st.composite
def certificates(draw: st.DrawFn) -> bytes:
    """DER certificates with drawn subject alternative names, malformed ones included."""
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "MA.DGSN.CCPI")])
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(TLS_KEY.public_key())
        .serial_number(draw(st.integers(1, 2**159 - 1)))
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
    )
    san = draw(st.sampled_from(["none", "dns", "ip", "garbage", "twice"]))
    if san in ("dns", "twice"):
        names = draw(st.lists(dns_names, min_size=1, max_size=3))
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
    elif san == "ip":
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(draw(st.ip_addresses()))]),
            critical=False,
        )
    elif san == "garbage":
        value = draw(st.binary(max_size=16))
        builder = builder.add_extension(
            x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, value),
            critical=False,
        )
    if san == "twice":
        builder = builder.add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True
        )
    der = builder.sign(TLS_KEY, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    if san == "twice":
        # basicConstraints (2.5.29.19) renamed subjectAltName (2.5.29.17): two SAN
        # extensions. The certificate's signature breaks, which the card never checks.
        der = der.replace(bytes.fromhex("0603551d13"), bytes.fromhex("0603551d11"))
    return der


def certificate_with_san_value(value: bytes) -> bytes:
    """A certificate whose subjectAltName extension holds ``value``, DER or not."""
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "MA.DGSN.CCPI")])
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(TLS_KEY.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, value),
            critical=False,
        )
        .sign(TLS_KEY, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )


card_fields = changes(
    {
        "version": st.integers(0, 2**32 - 1),
        "agency_id": agency_ids,
        "name": texts,
        "endpoint": st.one_of(st.just(""), texts),
        "signing_key": st.binary(max_size=40),
        "kem_mlkem768_key": st.one_of(
            st.binary(max_size=40), st.binary(min_size=1184, max_size=1184)
        ),
        "kem_x25519_key": st.one_of(st.just(b""), st.binary(min_size=32, max_size=32)),
        "tls_certificate": certificates() | st.binary(max_size=64),
        "created_at": st.one_of(st.none(), timestamps()),
        "unknown_enum": enum_values,
        # The post-quantum second signature: made right, or one of its refusals.
        "mldsa65": st.sampled_from(
            ["signed", "signed", "key only", "signature only", "bad signature", "short key"]
        ),
    },
)


def drawn_card(fields: dict[str, object]) -> envelope_pb2.AgencyCard:
    card = envelope_pb2.AgencyCard()
    card.CopyFrom(CARD)
    for name, value in fields.items():
        if name == "created_at":
            card.ClearField("created_at")
            if value is not None:
                assert isinstance(value, Timestamp)
                card.created_at.CopyFrom(value)
        elif name == "mldsa65":
            public = MLDSA65_KEY.public_key().public_bytes_raw()
            if value in ("signed", "key only", "bad signature"):
                card.mldsa65_key = public
            elif value == "short key":
                card.mldsa65_key = public[:-1]
        elif name == "unknown_enum":
            # An unknown field (number 15, varint) after the known ones: the signature
            # covers it, the parser must skip it.
            assert isinstance(value, int)
            card.MergeFromString(b"\x78" + _varint(value & (2**64 - 1)))
        else:
            setattr(card, name, value)
    return card


def self_signed(card: envelope_pb2.AgencyCard, fields: dict[str, object]) -> bytes:
    """``card`` signed by A's Ed25519 key, and with the drawn ML-DSA-65 signature."""
    variant = fields.get("mldsa65")
    signed = sign_card(card, A.signing_key, MLDSA65_KEY if variant == "signed" else None)
    if variant in ("signature only", "bad signature", "short key"):
        outer = envelope_pb2.SignedCard.FromString(signed)
        outer.mldsa65_signature = MLDSA65_KEY.sign(b"another message")
        signed = outer.SerializeToString()
    return signed


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


@given(card_fields)
@example({"created_at": Timestamp(seconds=0, nanos=-1)})
@example({"created_at": Timestamp(seconds=253_402_300_800)})
@example({"tls_certificate": certificate_with_san_value(b"")})
@example({"tls_certificate": certificate_with_san_value(b"\x30\x03\x82\x01\xff")})
@budget()
def test_a_self_signed_card_with_drawn_fields_parses_or_is_refused(
    fields: dict[str, object],
) -> None:
    card = drawn_card(fields)
    outcome = card_or_error(self_signed(card, fields))
    if isinstance(outcome, PeerCard):
        assert outcome.agency_id == card.agency_id
        assert is_valid_timestamp(card.created_at)
        assert outcome.post_quantum_signed == (fields.get("mldsa65") == "signed")


PQ_CARD = self_signed(drawn_card({"mldsa65": "signed"}), {"mldsa65": "signed"})


@given(st.one_of(st.binary(max_size=512), bit_flips(A.card.signed_card), bit_flips(PQ_CARD)))
@example(b"\x0a" + b"\xff" * 9 + b"\x01")
@budget()
def test_card_bytes_parse_or_are_refused(signed_card: bytes) -> None:
    outcome = card_or_error(signed_card)
    if isinstance(outcome, PeerCard):
        assert outcome.signing_key_id == A.card.signing_key_id


def test_the_unchanged_card_parses() -> None:
    assert isinstance(card_or_error(sign_card(drawn_card({}), A.signing_key)), PeerCard)
    post_quantum = card_or_error(PQ_CARD)
    assert isinstance(post_quantum, PeerCard)
    assert post_quantum.post_quantum_signed


BEGIN = "-----BEGIN LIAISON AGENCY CARD-----"
END = "-----END LIAISON AGENCY CARD-----"


@st.composite
def armored_texts(draw: st.DrawFn) -> str:
    """Armor around drawn bodies: valid base64, non-alphabet text, non-ASCII, bad padding."""
    body = draw(
        st.one_of(
            st.binary(max_size=200).map(lambda b: base64.b64encode(b).decode()),
            st.text(max_size=100),
            st.text(alphabet="ABCD=+/\u00e9\u0660 \t\r", max_size=20),
        )
    )
    separator = draw(st.sampled_from(["\n", "\r\n", "\n\n"]))
    return separator.join([BEGIN, body, END])


@given(
    st.one_of(
        st.text(max_size=300),
        armored_texts(),
        bit_flips(armor_card(A.card.signed_card).encode()).map(lambda b: b.decode("latin-1")),
    )
)
@example(f"{BEGIN}\n\u00e9\n{END}")
@example(f"{BEGIN}\nAAA\n{END}")
@budget()
def test_armored_text_dearmors_or_is_refused(text: str) -> None:
    try:
        signed_card = dearmor_card(text)
    except CardError as error:
        refused = error
    else:
        card_or_error(signed_card)
        return
    assert str(refused)


@given(card_fields)
@budget(0.5)
def test_armor_round_trips_any_card(fields: dict[str, object]) -> None:
    signed_card = sign_card(drawn_card(fields), A.signing_key)
    assert dearmor_card(armor_card(signed_card)) == signed_card


# --- Credential folders ----------------------------------------------------------------

CA = local_certificate_authority("MA.DGSN.CCPI")
CLIENT = issue_api_client_certificate(CA, "admin")
UNLOCKER = Unlocker(Passphrase("property test passphrase"))


def sealed_key(issued: IssuedCertificate) -> bytes:
    """``issued``'s key as a credential folder holds it: sealed under ``UNLOCKER``."""
    der = issued.key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_id = certificate_sha256(issued.certificate.public_bytes(serialization.Encoding.DER))
    params = KdfParams.fresh(4)
    return seal(der, role=CLIENT_KEY_ROLE, key_id=key_id, params=params, unlocker=UNLOCKER)


VALID = {
    "ca.crt": CA.certificate_pem(),
    "client.crt": CLIENT.certificate_pem(),
    "client.key": sealed_key(CLIENT),
    "target": b"127.0.0.1:7700\n",
}
FILES = sorted(VALID)

# What each file of the folder may be: missing, a directory, garbage, or another file's content.
file_contents = st.one_of(
    st.sampled_from(["missing", "directory"]),
    st.binary(max_size=64),
    st.sampled_from(
        [*VALID.values(), sealed_key(CA), CLIENT.key_pem(), b"\xff\xfe:7700", b"", b" \n"]
    ),
    st.text(max_size=30).map(str.encode),
)


def write_folder(folder: Path, contents: dict[str, object], key_mode: int) -> None:
    folder.mkdir(mode=0o700)
    for name in FILES:
        content = contents.get(name, VALID[name])
        path = folder / name
        if content == "directory":
            path.mkdir()
        elif content != "missing":
            assert isinstance(content, bytes)
            path.write_bytes(content)
    key = folder / "client.key"
    if key.exists():
        key.chmod(key_mode)


def credential_or_error(folder: Path) -> ClientCredential | KeyStoreError:
    try:
        credential = ClientCredential.load(folder, UNLOCKER)
    except KeyStoreError as error:
        refused = error
    else:
        _count("loaded")
        return credential
    _count(str(refused).replace(str(folder), "FOLDER"))
    assert str(refused)
    return refused


@given(
    contents=changes(dict.fromkeys(FILES, file_contents), most=2),
    key_mode=st.just(0o600) | st.sampled_from([0o400, 0o640, 0o604]),
)
@example(contents={"target": b"\xff\xfe:7700"}, key_mode=0o600)
@example(contents={"client.key": "directory"}, key_mode=0o600)
@example(contents={"ca.crt": "directory"}, key_mode=0o600)
@example(contents={"ca.crt": b"garbage"}, key_mode=0o600)
@example(contents={"client.key": sealed_key(CA)}, key_mode=0o600)
@example(contents={"client.key": CLIENT.key_pem()}, key_mode=0o600)
@example(contents={"target": b" \n"}, key_mode=0o600)
@budget(0.5)
def test_a_credential_folder_loads_into_a_client_or_is_refused(
    contents: dict[str, object], key_mode: int
) -> None:
    with tempfile.TemporaryDirectory() as root:
        folder = Path(root) / "credential"
        write_folder(folder, contents, key_mode)
        outcome = credential_or_error(folder)
    if isinstance(outcome, KeyStoreError):
        return
    # Loaded means usable: the files hold what their names say, so that a bad folder
    # is refused here by name rather than later as an unreachable node.
    assert x509.load_pem_x509_certificates(outcome.ca_certificate)
    certificate = x509.load_pem_x509_certificate(outcome.certificate)
    key = serialization.load_pem_private_key(outcome.private_key, password=None)
    assert key.public_key() == certificate.public_key()
    assert outcome.target
    assert outcome.target.isprintable()
    assert " " not in outcome.target
    client = LiaisonClient(outcome, timeout=1.0)
    client.close()
