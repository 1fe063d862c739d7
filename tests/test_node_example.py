"""``liaison users export``, and the Node.js example (examples/node) that uses the PKCS#12
file it writes to send a notice through the local API with @grpc/grpc-js.

The example runs when ``node`` is on PATH and ``npm ci --prefix examples/node`` has
installed its packages; otherwise its test skips and says which is missing. CI sets
``LIAISON_REQUIRE_NODE=1``: there a missing one fails the test instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from liaison.keys.credentials import (
    EXPORT_PASSPHRASE_BITS,
    PKCS12_KDF_ROUNDS,
    PKCS12_MAC_ROUNDS,
)
from liaison.server.home import NodeHome
from liaison.v1 import node_pb2, notice_pb2
from tests.cli_homes import CliHome, run, run_json, snapshot
from tests.conftest import TEST_PASSPHRASE, RunningNode

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "node"
REQUIRE_NODE = "LIAISON_REQUIRE_NODE"
WAIT_SECONDS = 30

# Known DER of the settings (RFC 8018, RFC 7292), looked for in the file cryptography
# wrote: the OIDs of PBES2 and PBKDF2; PBKDF2's iteration count (600,000) followed by its
# PRF, hmacWithSHA256; AES-256-CBC's OID followed by its 16-byte IV; the MAC's digest,
# SHA-256, and the MAC's iteration count (2,048), the last field of the file.
PBES2 = bytes.fromhex("06092a864886f70d01050d")
PBKDF2 = bytes.fromhex("06092a864886f70d01050c")
PBKDF2_ROUNDS_AND_PRF = bytes.fromhex("02030927c0300c06082a864886f70d02090500")
AES256_CBC_IV = bytes.fromhex("060960864801650304012a0410")
MAC_SHA256 = bytes.fromhex("300d060960864801650304020105000420")
MAC_ROUNDS_AT_END = bytes.fromhex("02020800")
# secrets.token_urlsafe: 6 bits a character, so 22 characters are at least 128 bits.
EXPORT_PASSPHRASE = re.compile(r"[A-Za-z0-9_-]{22,}")


def export(
    capsys: pytest.CaptureFixture[str],
    home: Path,
    to: Path,
    name: str = "admin",
    *,
    passphrase_to: Path | None = None,
) -> tuple[int, str, str]:
    """``liaison users export NAME --to TO --passphrase-to TO.pass`` (or PASSPHRASE_TO)."""
    passphrase_to = passphrase_to or to.with_name(to.name + ".pass")
    return run(
        capsys,
        *("users", "export", name, "--home", str(home)),
        *("--to", str(to), "--passphrase-to", str(passphrase_to)),
    )


def export_passphrase(passphrase_file: Path) -> str:
    """The passphrase in a file ``export`` wrote, checked to be the random one: mode
    0600, at least 128 bits of URL-safe base64, nothing else (not even a line end)."""
    assert stat.S_IMODE(passphrase_file.stat().st_mode) == 0o600
    secret = passphrase_file.read_text(encoding="ascii")
    assert EXPORT_PASSPHRASE.fullmatch(secret), "not one random URL-safe word"
    assert len(secret) * 6 >= EXPORT_PASSPHRASE_BITS >= 128
    return secret


def exported(capsys: pytest.CaptureFixture[str], home: Path) -> list[dict[str, str]]:
    events = run_json(capsys, "audit", "log", "--home", str(home), "--event", "credential-exported")
    assert isinstance(events, list)
    return events


def test_export_writes_the_credential_as_pkcs12_under_a_random_passphrase(
    a_home: CliHome, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    to, passphrase_file = tmp_path / "admin.p12", tmp_path / "admin.pass"
    code, out, err = export(capsys, a_home.path, to, passphrase_to=passphrase_file)
    assert code == 0, err
    assert "Wrote the credential of admin" in out
    assert f"its export passphrase to {passphrase_file}" in out
    assert stat.S_IMODE(to.stat().st_mode) == 0o600
    secret = export_passphrase(passphrase_file)
    bundle = to.read_bytes()
    for hidden in (secret, TEST_PASSPHRASE, "PRIVATE KEY"):
        assert hidden not in out + err

    folder = a_home.path / "credentials" / "admin"
    certificate = x509.load_pem_x509_certificate((folder / "client.crt").read_bytes())
    authorities = x509.load_pem_x509_certificates((folder / "ca.crt").read_bytes())
    key, cert, cas = pkcs12.load_key_and_certificates(bundle, secret.encode())
    assert key is not None
    assert key.public_key() == certificate.public_key()
    assert cert == certificate
    assert cas == authorities
    loaded = pkcs12.load_pkcs12(bundle, secret.encode())
    assert loaded.cert is not None
    assert loaded.cert.friendly_name == b"admin"  # a Java KeyStore's alias
    # Not under the credential's own passphrase: that one only opened the sealed key.
    for wrong in (None, TEST_PASSPHRASE.encode(), b"not the passphrase"):
        with pytest.raises(ValueError, match="Invalid password"):
            pkcs12.load_key_and_certificates(bundle, wrong)

    # Key and certificates under PBES2 (PBKDF2-HMAC-SHA256, 600,000 rounds, AES-256-CBC),
    # each of the two encrypted parts; the MAC HMAC-SHA256 at 2,048 rounds.
    assert (PKCS12_KDF_ROUNDS, PKCS12_MAC_ROUNDS) == (600_000, 2048)
    assert bundle.count(PBES2) == 2
    assert bundle.count(PBKDF2) == 2
    assert bundle.count(PBKDF2_ROUNDS_AND_PRF) == 2
    assert bundle.count(AES256_CBC_IV) == 2
    assert MAC_SHA256 in bundle
    assert bundle.endswith(MAC_ROUNDS_AT_END)

    (event,) = exported(capsys, a_home.path)
    assert event["actor"] == "admin"
    assert "user admin, certificate " in event["detail"]
    assert "as PKCS#12 (random export passphrase, 192 bits; PBKDF2-HMAC-SHA256" in event["detail"]
    assert secret not in json.dumps(event)


def test_each_export_has_its_own_passphrase(
    a_home: CliHome, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secrets = []
    for n in (1, 2):
        to = tmp_path / f"admin-{n}.p12"
        code, out, err = run(
            capsys,
            *("users", "export", "admin", "--home", str(a_home.path), "--json"),
            *("--to", str(to), "--passphrase-to", str(tmp_path / f"admin-{n}.pass")),
        )
        assert code == 0, err
        secret = export_passphrase(tmp_path / f"admin-{n}.pass")
        assert secret not in out + err
        assert json.loads(out)["passphrase_file"] == str(tmp_path / f"admin-{n}.pass")
        pkcs12.load_key_and_certificates(to.read_bytes(), secret.encode())
        secrets.append(secret)
    assert secrets[0] != secrets[1]
    with pytest.raises(ValueError, match="Invalid password"):
        pkcs12.load_key_and_certificates(
            (tmp_path / "admin-2.p12").read_bytes(), secrets[0].encode()
        )
    assert len(exported(capsys, a_home.path)) == 2


def test_export_never_writes_over_a_file(
    a_home: CliHome,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Either file existing already is refused before a passphrase is asked (there is none
    to be had here: no variable, no terminal): one line, exit 2, nothing written or
    audited, the existing file unchanged."""
    before = snapshot(a_home.path)
    monkeypatch.delenv("LIAISON_PASSPHRASE")
    exports = tmp_path / "exports"
    exports.mkdir()
    there = exports / "there"
    there.write_bytes(b"someone else's")
    to, passphrase_file = exports / "admin.p12", exports / "admin.pass"

    code, out, err = export(capsys, a_home.path, there, passphrase_to=passphrase_file)
    assert (code, out) == (2, "")
    assert err == f"liaison: {there} exists already; nothing was written\n"
    assert not passphrase_file.exists()

    code, out, err = export(capsys, a_home.path, to, passphrase_to=there)
    assert (code, out) == (2, "")
    assert err == f"liaison: {there} exists already; nothing was written\n"
    assert not to.exists()

    (exports / "link").symlink_to(exports / "nowhere")
    code, _, err = export(capsys, a_home.path, to, passphrase_to=exports / "link")
    assert code == 2
    assert "exists already" in err

    code, _, err = export(capsys, a_home.path, to, passphrase_to=to)
    assert code == 2
    assert "--to and --passphrase-to name the same file" in err

    assert there.read_bytes() == b"someone else's"
    assert sorted(path.name for path in exports.iterdir()) == ["link", "there"]
    assert snapshot(a_home.path) == before
    monkeypatch.setenv("LIAISON_PASSPHRASE", TEST_PASSPHRASE)
    assert exported(capsys, a_home.path) == []


def test_export_is_read_by_openssl_with_the_strong_settings(
    a_home: CliHome, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second implementation, OpenSSL (the one Node.js uses), opens the file with the
    passphrase file as it is, and names its algorithms and rounds."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("OpenSSL is not installed (no `openssl` on PATH)")
    to, passphrase_file = tmp_path / "admin.p12", tmp_path / "admin.pass"
    code, _, err = export(capsys, a_home.path, to, passphrase_to=passphrase_file)
    assert code == 0, err
    info = subprocess.run(
        [
            *(openssl, "pkcs12", "-info", "-nokeys", "-noout", "-in", str(to)),
            *("-passin", f"file:{passphrase_file}"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert info.returncode == 0, info.stderr
    strong = "PBES2, PBKDF2, AES-256-CBC, Iteration 600000, PRF hmacWithSHA256"
    lines = info.stdout.splitlines() + info.stderr.splitlines()
    assert f"PKCS7 Encrypted data: {strong}" in lines
    assert f"Shrouded Keybag: {strong}" in lines
    assert "MAC: sha256, Iteration 2048" in lines
    assert lines.count("Certificate bag") == 2  # client.crt and ca.crt


def test_export_refused_writes_and_audits_nothing(
    a_home: CliHome,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = snapshot(a_home.path)
    monkeypatch.setenv("LIAISON_PASSPHRASE", "not the passphrase of the credential")
    exports = tmp_path / "exports"
    exports.mkdir()
    to, passphrase_file = exports / "admin.p12", exports / "admin.pass"
    code, out, err = export(capsys, a_home.path, to, passphrase_to=passphrase_file)
    assert (code, out) == (2, "")
    assert "does not open with this passphrase" in err
    assert err.count("\n") == 1
    assert not to.exists()
    assert not passphrase_file.exists()
    assert snapshot(a_home.path) == before  # nothing audited either

    monkeypatch.setenv("LIAISON_PASSPHRASE", TEST_PASSPHRASE)
    code, _, err = export(capsys, a_home.path, exports / "x.p12", name="nobody")
    assert code == 2
    assert "is not a complete client credential" in err
    # Either file that cannot be created: neither is left behind.
    missing = exports / "no-such-folder"
    for p12, passphrase_to in ((missing / "x.p12", to), (to, missing / "x.pass")):
        code, _, err = export(capsys, a_home.path, p12, passphrase_to=passphrase_to)
        assert code == 2
        assert f"cannot create {missing}" in err
        assert "No such file or directory" in err
    assert list(exports.iterdir()) == []
    assert snapshot(a_home.path) == before
    assert exported(capsys, a_home.path) == []


def test_export_failing_to_write_the_passphrase_leaves_no_part_of_it(
    a_home: CliHome,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A write that fails once the file exists (a full disk): the part written goes too,
    and with it the .p12 file written before."""
    exports = tmp_path / "exports"
    exports.mkdir()
    to, passphrase_file = exports / "admin.p12", exports / "admin.pass"
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if passphrase_file.exists() and os.fstat(fd).st_ino == passphrase_file.stat().st_ino:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    code, _, err = export(capsys, a_home.path, to, passphrase_to=passphrase_file)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert code == 2
    assert f"cannot create {passphrase_file}: No space left on device" in err
    assert list(exports.iterdir()) == []
    assert exported(capsys, a_home.path) == []


@pytest.fixture
def node() -> str:
    """The ``node`` command, once examples/node has its packages; else skip (or, with
    LIAISON_REQUIRE_NODE=1, fail) saying what is missing. Ask for it first: before
    nodes are started for nothing."""
    node = shutil.which("node")
    if node is None:
        missing = "Node.js is not installed (no `node` on PATH)"
    elif not (EXAMPLE / "node_modules").is_dir():
        missing = "the example's packages are not installed; run: npm ci --prefix examples/node"
    else:
        return node
    if os.environ.get(REQUIRE_NODE) == "1":
        pytest.fail(f"{missing} ({REQUIRE_NODE}=1: the Node.js example must run here)")
    pytest.skip(missing)


def send_js(
    node: str, credential: Path, p12: Path, *options: str, passphrase_file: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``node send.js --credential CREDENTIAL --p12 P12 --p12-passphrase-file P12.pass
    OPTIONS…`` in examples/node, without LIAISON_PASSPHRASE (send.js has no use for it)."""
    passphrase_file = passphrase_file or p12.with_name(p12.name + ".pass")
    return subprocess.run(
        [
            *(node, "send.js", "--credential", str(credential), "--p12", str(p12)),
            *("--p12-passphrase-file", str(passphrase_file), *options),
        ],
        cwd=EXAMPLE,
        env={name: value for name, value in os.environ.items() if name != "LIAISON_PASSPHRASE"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_node_example_sends_a_notice(
    node: str,
    homes: tuple[NodeHome, NodeHome],
    pair: tuple[RunningNode, RunningNode],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    a_home, (a, b) = homes[0], pair
    p12 = tmp_path / "admin.p12"
    code, _, err = export(capsys, a_home.path, p12)
    assert code == 0, err
    subject = "Phishing kit hosted abroad (sent from Node.js)"
    body = tmp_path / "body.txt"
    body.write_text("Line one of the body.\nLine two: ünïcödé.\n", encoding="utf-8")

    sent = send_js(
        node,
        a_home.credential_dir("admin"),
        p12,
        *("--to", b.identity.agency_id, "--case-ref", "CMS-881"),
        *("--category", "cybercrime", "--tlp", "green"),
        *("--subject", subject, "--body-file", str(body)),
    )
    assert sent.returncode == 0, sent.stderr
    result = json.loads(sent.stdout)
    assert result["state"] in {"queued", "sent", "delivered"}

    with a.client() as client:
        status = client.get_status(result["message_id"], wait_seconds=WAIT_SECONDS)
    assert status.state == node_pb2.MESSAGE_STATE_DELIVERED
    assert status.peer == b.identity.agency_id
    with b.client() as client:
        received = client.get_message(result["message_id"])
    assert received.summary.direction == node_pb2.DIRECTION_INBOUND
    assert received.summary.peer == a.identity.agency_id
    assert received.notice.subject == subject
    assert received.notice.body == body.read_text(encoding="utf-8")
    assert received.notice.case_reference == "CMS-881"
    assert received.notice.category == notice_pb2.CATEGORY_CYBERCRIME
    assert received.notice.handling == notice_pb2.TLP_GREEN
    assert received.notice.sent_by == "admin"


def test_node_example_checks_the_nodes_certificate(
    node: str,
    homes: tuple[NodeHome, NodeHome],
    node_factory: Callable[[NodeHome], RunningNode],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Node B's credential pointed at node A's API: send.js refuses A's certificate (not
    issued by B's CA) before sending anything."""
    a_home, b_home = homes
    node_factory(a_home)
    p12 = tmp_path / "b-admin.p12"
    code, _, err = export(capsys, b_home.path, p12)
    assert code == 0, err
    folder = tmp_path / "b-admin"
    shutil.copytree(b_home.credential_dir("admin"), folder)
    shutil.copy(a_home.credential_dir("admin") / "target", folder / "target")
    body = tmp_path / "body.txt"
    body.write_text("body", encoding="utf-8")

    sent = send_js(
        node,
        folder,
        p12,
        *("--to", "DE.BPOL.LO-RABAT", "--case-ref", "CMS-881"),
        *("--subject", "never sent", "--body-file", str(body)),
    )
    assert (sent.returncode, sent.stdout) == (3, "")
    assert "unable to verify the first certificate" in sent.stderr  # Node's own TLS check


def test_node_example_refuses_a_wrong_passphrase(
    node: str, tmp_path: Path, a_home: CliHome, capsys: pytest.CaptureFixture[str]
) -> None:
    """The credential's own passphrase does not open the .p12 file, and a passphrase file
    that others may read is refused before it is used."""
    p12 = tmp_path / "admin.p12"
    code, _, err = export(capsys, a_home.path, p12)
    assert code == 0, err
    body = tmp_path / "body.txt"
    body.write_text("body", encoding="utf-8")
    notice = (
        *("--to", "DE.BPOL.LO-RABAT", "--case-ref", "CMS-881"),
        *("--subject", "never sent", "--body-file", str(body)),
    )
    credential = a_home.path / "credentials" / "admin"

    wrong = tmp_path / "credential.pass"
    wrong.write_text(TEST_PASSPHRASE + "\n", encoding="utf-8")
    wrong.chmod(0o600)
    sent = send_js(node, credential, p12, *notice, passphrase_file=wrong)
    assert (sent.returncode, sent.stdout) == (2, "")
    assert f"does not open with the passphrase in {wrong}" in sent.stderr

    shared = p12.with_name(p12.name + ".pass")
    shared.chmod(0o644)
    sent = send_js(node, credential, p12, *notice)
    assert (sent.returncode, sent.stdout) == (2, "")
    assert f"passphrase file {shared} is accessible to others (mode 644)" in sent.stderr
