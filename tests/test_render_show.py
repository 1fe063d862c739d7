"""``liaison show`` as an officer reads it, and attachments saved as files.

The handling banner, the evaluation in words and the numbered attachment
list of ``render.detail_lines``; ``attachments.save_attachments`` writing a
peer's attachments under names of its own, never over a file, never through
a link, never unchecked. Protobufs are built here; no node runs. Run on its
own with ``.venv/bin/pytest tests/test_render_show.py``.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

import pytest

from liaison.client import render
from liaison.client.attachments import AttachmentError, safe_file_name, save_attachments
from liaison.client.errors import ClientError
from liaison.v1 import node_pb2
from liaison.v1 import notice_pb2 as N
from tests.notices import complete, sample_notice

A_ID = "MA.DGSN.CCPI"
SGR = re.compile(r"\x1b\[[0-9;]*m")

BANNERS = {
    N.TLP_CLEAR: "==== TLP:CLEAR — disclosure is not limited ====",
    N.TLP_GREEN: "==== TLP:GREEN — limited disclosure, within the community ====",
    N.TLP_AMBER: (
        "==== TLP:AMBER — limited disclosure, recipients' organisation and its clients"
        " on a need-to-know basis ===="
    ),
    N.TLP_AMBER_STRICT: (
        "==== TLP:AMBER+STRICT — limited disclosure, recipients' organisation only ===="
    ),
    N.TLP_RED: (
        "==== TLP:RED — for the eyes and ears of individual recipients only,"
        " no further disclosure ===="
    ),
}
COLOURS = {
    N.TLP_CLEAR: "\x1b[1m",
    N.TLP_GREEN: "\x1b[1;32m",
    N.TLP_AMBER: "\x1b[1;33m",
    N.TLP_AMBER_STRICT: "\x1b[1;33m",
    N.TLP_RED: "\x1b[1;31m",
}
RESET = "\x1b[0m"


def attachment(name: str, content: bytes, media_type: str = "application/pdf") -> N.Attachment:
    return N.Attachment(
        name=name, media_type=media_type, content=content, sha256=hashlib.sha256(content).digest()
    )


def notice_with(
    *attachments: N.Attachment, handling: N.Tlp.ValueType = N.TLP_AMBER
) -> N.CaseNotice:
    notice = complete(sample_notice(), A_ID)
    notice.handling = handling
    notice.attachments.extend(attachments)
    return notice


def detail(notice: N.CaseNotice) -> node_pb2.MessageDetail:
    d = node_pb2.MessageDetail(
        summary=node_pb2.MessageSummary(
            message_id="019a2b3c-4d5e-7f60-8a9b-0c1d2e3f4a5b",
            direction=node_pb2.DIRECTION_INBOUND,
            peer=A_ID,
            handling=notice.handling,
            subject=notice.subject,
        ),
        envelope_sha256="ab" * 32,
        timeline=[node_pb2.TimelineEvent(event="received", detail="by \x1b[2J the relay")],
    )
    d.notice.CopyFrom(notice)
    return d


# The banner ------------------------------------------------------------------------------


@pytest.mark.parametrize("handling", list(BANNERS))
def test_the_banner_opens_and_closes_the_notice_without_escapes(handling: N.Tlp.ValueType) -> None:
    lines = render.detail_lines(detail(notice_with(handling=handling)))
    assert lines[0] == lines[-1] == BANNERS[handling]
    assert "\x1b" not in "\n".join(lines)
    assert render.tlp(handling) in lines[4]  # the Category line keeps its TLP too


@pytest.mark.parametrize("handling", list(BANNERS))
def test_colour_wraps_the_banner_alone(handling: N.Tlp.ValueType) -> None:
    notice = notice_with(handling=handling)
    notice.subject = "\x1b[31mfake red\x1b[0m"
    d = detail(notice)
    plain = render.detail_lines(d)
    coloured = render.detail_lines(d, color=True)

    expected = f"{COLOURS[handling]}{BANNERS[handling]}{RESET}"
    assert coloured[0] == coloured[-1] == expected
    # Everything between the banners is the plain output, the peer's ESC escaped.
    assert coloured[1:-1] == plain[1:-1]
    assert r"Subject     \x1b[31mfake red\x1b[0m" in coloured
    # Exactly one colour and one reset per banner, nothing else raw.
    assert len(SGR.findall("\n".join(coloured))) == 4
    assert "\n".join(coloured).count("\x1b") == 4


@pytest.mark.parametrize(
    ("handling", "code"), [(N.TLP_UNSPECIFIED, "UNSPECIFIED"), (9, "UNKNOWN-9")]
)
def test_a_missing_or_unknown_handling_code_says_ask_the_originator(
    handling: int, code: str
) -> None:
    banner = render.handling_banner(handling)
    assert banner == (
        f"==== TLP:{code} — no handling code; ask the originator before any disclosure ===="
    )
    assert render.handling_banner(handling, color=True) == f"\x1b[1m{banner}{RESET}"


def test_colour_is_wanted_on_a_terminal_unless_no_color_or_a_dumb_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert render.color_wanted(Terminal())
    assert not render.color_wanted(io.StringIO())
    monkeypatch.setenv("TERM", "dumb")
    assert not render.color_wanted(Terminal())
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("NO_COLOR", "1")
    assert not render.color_wanted(Terminal())


# The evaluation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reliability", "assessment", "words"),
    [
        (
            N.SOURCE_RELIABILITY_B,
            N.INFORMATION_ASSESSMENT_2,
            "B2: source usually reliable; "
            "information known personally to the source but not to the officer",
        ),
        (
            N.SOURCE_RELIABILITY_A,
            N.INFORMATION_ASSESSMENT_1,
            "A1: source completely reliable; "
            "information confirmed, known to be true without reservation",
        ),
        (
            N.SOURCE_RELIABILITY_C,
            N.INFORMATION_ASSESSMENT_3,
            "C3: source fairly reliable; "
            "information not known personally to the source but corroborated",
        ),
        (
            N.SOURCE_RELIABILITY_D,
            N.INFORMATION_ASSESSMENT_4,
            "D4: source not usually reliable; information cannot be judged",
        ),
        (
            N.SOURCE_RELIABILITY_X,
            N.INFORMATION_ASSESSMENT_4,
            "X4: source reliability cannot be judged; information cannot be judged",
        ),
        (0, 0, "not graded"),
        (
            N.SOURCE_RELIABILITY_B,
            0,
            "B: source usually reliable; information assessment not graded",
        ),
        (
            7,
            N.INFORMATION_ASSESSMENT_1,
            "1: source reliability unknown (7); "
            "information confirmed, known to be true without reservation",
        ),
    ],
)
def test_the_evaluation_is_shown_in_words(reliability: int, assessment: int, words: str) -> None:
    notice = notice_with()
    notice.evaluation.source_reliability = N.SourceReliability.ValueType(reliability)
    notice.evaluation.information_assessment = N.InformationAssessment.ValueType(assessment)
    assert f"Evaluation  {words}" in render.detail_lines(detail(notice))


# The attachment list ---------------------------------------------------------------------


def test_attachments_are_listed_numbered_with_their_digest_and_names_escaped() -> None:
    scan = b"%PDF" + bytes(20477)
    photo = b"\xff\xd8 jpeg"
    notice = notice_with(
        attachment("scan.pdf", scan), attachment("photo\u202egpj.exe\n", photo, "image/jpeg")
    )
    lines = render.detail_lines(detail(notice))
    listed = [line for line in lines if line.startswith("Attachment")]
    assert listed == [
        "Attachment  scan.pdf (application/pdf, 20481 bytes)"
        f"  #1  sha256 {hashlib.sha256(scan).hexdigest()[:16]}…",
        r"Attachment  photo\u202egpj.exe\n (image/jpeg, 7 bytes)"
        f"  #2  sha256 {hashlib.sha256(photo).hexdigest()[:16]}…",
    ]
    assert render.attachment_lines(notice) == listed


# Saving attachments ----------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    inside = tmp_path / "saved"
    inside.mkdir()
    return inside


def entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


LONG = "a" * 1000 + ".pdf"


@pytest.mark.parametrize(
    ("name", "saved_as"),
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\x.exe", "x.exe"),
        ("/etc/cron.d/job", "job"),
        (".bashrc", "bashrc"),
        (" . .profile", "profile"),
        ("invoice\u202efdp.exe", "invoicefdp.exe"),
        ("", "attachment-1"),
        ("..", "attachment-1"),
        ("../", "attachment-1"),
        ("\u202e\u2066", "attachment-1"),
        (LONG, "a" * 196 + ".pdf"),
        ("report\nCc: all.txt", "reportCc_ all.txt"),
        ("a:b*c?<d>|e\"f'.txt", "a_b_c__d__e_f_.txt"),
        ("NUL.txt", "_NUL.txt"),
        ("con", "_con"),
        ("Rapport d'enquête (v2).pdf", "Rapport d_enquête (v2).pdf"),
        ("تقرير الضبط.pdf", "تقرير الضبط.pdf"),
    ],
)
def test_a_hostile_name_lands_inside_the_folder_under_a_safe_name(
    name: str, saved_as: str, folder: Path
) -> None:
    content = b"evidence for " + name.encode()
    [path] = save_attachments(notice_with(attachment(name, content)), folder)
    assert path == folder / saved_as
    assert entries(folder) == [saved_as]
    assert entries(folder.parent) == ["saved"]  # nothing written beside the folder
    assert path.read_bytes() == content
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("name", "stem", "suffix"),
    [
        (LONG, "a", ".pdf"),
        ("é" * 1000 + ".docx", "é", ".docx"),
        ("界" * 300 + ".jpeg", "界", ".jpeg"),
        ("x." + "y" * 500, "x.y", ""),  # a "suffix" that long is no extension
    ],
)
def test_a_long_name_is_cut_to_200_bytes_keeping_its_extension(
    name: str, stem: str, suffix: str
) -> None:
    safe = safe_file_name(name, 3)
    assert 190 < len(safe.encode()) <= 200
    assert safe.startswith(stem)
    assert safe.endswith(suffix)
    assert safe.count(".") == 1
    assert safe == safe_file_name(name, 3)


def test_a_taken_name_is_never_overwritten(folder: Path) -> None:
    first, second = b"first", b"second"
    (folder / "scan.pdf").write_bytes(b"the officer's own file")
    [one] = save_attachments(notice_with(attachment("scan.pdf", first)), folder)
    [two] = save_attachments(notice_with(attachment("scan.pdf", second)), folder)
    assert (one, two) == (folder / "scan (2).pdf", folder / "scan (3).pdf")
    assert (folder / "scan.pdf").read_bytes() == b"the officer's own file"
    assert (one.read_bytes(), two.read_bytes()) == (first, second)


def test_two_attachments_of_one_name_are_both_saved_in_order(folder: Path) -> None:
    notice = notice_with(attachment("a/x", b"1"), attachment("b\\x", b"2"), attachment("", b"3"))
    paths = save_attachments(notice, folder)
    assert paths == [folder / "x", folder / "x (2)", folder / "attachment-3"]
    assert [p.read_bytes() for p in paths] == [b"1", b"2", b"3"]


@pytest.mark.parametrize("target_exists", [True, False])
def test_a_planted_symlink_is_not_followed(
    target_exists: bool, folder: Path, tmp_path: Path
) -> None:
    target = tmp_path / "target"
    if target_exists:
        target.write_bytes(b"untouched")
    (folder / "scan.pdf").symlink_to(target)
    [path] = save_attachments(notice_with(attachment("scan.pdf", b"peer bytes")), folder)
    assert path == folder / "scan (2).pdf"
    assert not path.is_symlink()
    assert path.read_bytes() == b"peer bytes"
    assert (folder / "scan.pdf").is_symlink()
    if target_exists:
        assert target.read_bytes() == b"untouched"
    else:
        assert not os.path.lexists(target)


def test_a_sha256_mismatch_raises_naming_the_attachment_and_writes_nothing(
    folder: Path,
) -> None:
    bad = attachment("bad.pdf", b"what was sent")
    bad.content = b"what arrived"
    notice = notice_with(attachment("good.pdf", b"fine"), bad)
    with pytest.raises(AttachmentError, match=r"^attachment 2 does not match its SHA-256") as e:
        save_attachments(notice, folder)
    assert e.value.number == 2
    assert isinstance(e.value, ClientError)
    assert entries(folder) == []
    assert save_attachments(notice, folder, only=1) == [folder / "good.pdf"]


def test_only_saves_the_one_numbered_attachment(folder: Path) -> None:
    notice = notice_with(attachment("one.txt", b"1"), attachment("two.txt", b"2"))
    assert save_attachments(notice, folder, only=2) == [folder / "two.txt"]
    assert entries(folder) == ["two.txt"]
    assert (folder / "two.txt").read_bytes() == b"2"


@pytest.mark.parametrize("only", [0, 3, -1])
def test_only_out_of_range_raises_and_writes_nothing(only: int, folder: Path) -> None:
    notice = notice_with(attachment("one.txt", b"1"), attachment("two.txt", b"2"))
    with pytest.raises(AttachmentError, match=f"no attachment {only}") as e:
        save_attachments(notice, folder, only=only)
    assert e.value.number == only
    assert entries(folder) == []


def test_the_folder_must_be_an_existing_directory(tmp_path: Path) -> None:
    notice = notice_with(attachment("one.txt", b"1"))
    missing = tmp_path / "missing"
    a_file = tmp_path / "file"
    a_file.write_bytes(b"")
    for folder in (missing, a_file):
        with pytest.raises(AttachmentError, match="is not an existing folder"):
            save_attachments(notice, folder)
    assert entries(tmp_path) == ["file"]
    assert a_file.read_bytes() == b""


def test_values_the_schema_does_not_define_are_shown_not_fatal() -> None:
    notice = notice_with()
    notice.category = N.Category.ValueType(99)
    notice.priority = N.Priority.ValueType(98)
    notice.handling = N.Tlp.ValueType(97)
    lines = render.detail_lines(detail(notice))
    assert lines[0] == lines[-1] == render.handling_banner(97)
    assert lines[0].startswith("==== TLP:UNKNOWN-97 — no handling code")
    assert "Category    unknown-99    Priority unknown-98    TLP:UNKNOWN-97" in lines
    assert render.detail_json(detail(notice))["notice"]["category"] == "unknown-99"
