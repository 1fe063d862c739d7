"""The HTML audit report (``liaison audit report --html``) as an auditor sees it.

Unit tests read the string ``report.render_html`` returns: every message is
there, hostile text stays text, nothing is loaded from anywhere, and the
verification banner says what the log's check found. Browser tests open the
written file in headless Chromium (Debian's ``chromium``) and read the DOM it
built and a screenshot of it. Without chromium they skip, unless
``LIAISON_REQUIRE_CHROMIUM`` is set (CI sets it): then they fail. Run on its
own with ``.venv/bin/pytest tests/test_report_html.py``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import os
import shutil
import struct
import subprocess
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

from liaison.client.render import safe
from liaison.client.report import (
    CONTENT_SECURITY_POLICY,
    ReportCheckpoint,
    ReportData,
    ReportEvent,
    ReportMessage,
    ReportVerification,
    render_html,
)
from liaison.keys.text import first_control_character

A_ID = "MA.DGSN.CCPI"
B_ID = "DE.BPOL.LO-RABAT"
C_ID = "FR.OCRTIS"
ROOT = "7f" * 32
# Each a way out of text: markup, an attribute, a comment, SVG, the display order, a terminal.
HOSTILE_PARTS = {
    "script": "<script>alert(1)</script>",
    "attribute": '"><img src=x onerror=alert(2)>',
    "single quote": "' onmouseover='alert(3)",
    "comment": "--><!--",
    "svg": "</text></svg><svg onload=alert(4)>",
    "bidi override": "\u202eflow\u202c",
    "bidi isolate": "\u2066gpj.exe\u2069",
    "NUL": "a\x00b",
    "ANSI": "\x1b[31mred\x1b[0m",
    "line feed": "one\ntwo",
}
HOSTILE = "".join(HOSTILE_PARTS.values())
# Every element the report may hold; a hostile string that became markup would add another.
REPORT_TAGS = {
    "html", "head", "meta", "title", "style", "body", "main", "header", "footer", "section",
    "h1", "h2", "h3", "p", "div", "span", "strong", "code", "bdi", "a", "dl", "dt", "dd",
    "ul", "li", "table", "thead", "tbody", "tr", "th", "td", "figure", "figcaption",
    "svg", "rect", "line", "text",
}  # fmt: skip
CHROMIUM_TIMEOUT_SECONDS = 60
SCREEN = (1280, 2000)


def at(day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2026, 11, day, hour, minute, tzinfo=dt.UTC)


def ev(
    seq: int,
    moment: dt.datetime,
    event: str,
    actor: str = "",
    peer: str = "",
    reason: str = "",
    detail: str = "",
) -> ReportEvent:
    return ReportEvent(seq, moment, event, actor, peer, reason, detail)


def message(
    number: int,
    direction: str,
    peer: str,
    events: tuple[ReportEvent, ...],
    *,
    case: str | None = "MA-2026-0042",
    category: str | None = "terrorism",
    tlp: str | None = "AMBER",
    state: str = "delivered",
) -> ReportMessage:
    return ReportMessage(
        message_id=f"019a7c3e-5b2d-7000-8000-{number:012d}",
        direction=direction,
        peer=peer,
        case_reference=case,
        category=category,
        tlp=tlp,
        priority="high",
        state=state,
        envelope_sha256=f"{number:02d}" * 32,
        events=events,
    )


def sample() -> ReportData:
    """Five messages over four days; the second came from a hostile peer."""
    messages = (
        message(
            1,
            "outbound",
            B_ID,
            (
                ev(10, at(2, 9), "sealed", "alice", B_ID, detail="envelope sha256 " + "01" * 32),
                ev(11, at(2, 9, 1), "sent", "node", B_ID),
                ev(12, at(2, 9, 2), "delivered", "node", B_ID, detail="receipt verified"),
                ev(20, at(3, 8), "acknowledged-by-peer", peer=B_ID, detail="read"),
                ev(21, at(3, 9), "acknowledged-by-peer", peer=B_ID, detail="action-taken"),
            ),
            tlp="RED",
            state="action-taken",
        ),
        message(
            2,
            "inbound",
            HOSTILE,
            (
                ev(13, at(2, 11), "received", HOSTILE, HOSTILE, detail=HOSTILE),
                ev(22, at(4, 11), "read", "bob", detail="read; acknowledgement 019a-r"),
                ev(23, at(4, 12), "acknowledged", "bob", detail="acknowledged; acknowledgement x"),
            ),
            case=HOSTILE,
            category=HOSTILE,
            tlp=HOSTILE,
            state="acknowledged",
        ),
        message(
            3,
            "inbound",
            C_ID,
            (ev(30, at(5, 10), "rejected", "node", C_ID, "INVALID_NOTICE", "bad subject"),),
            category=None,
            tlp=None,
            state="rejected",
        ),
        message(
            4,
            "outbound",
            C_ID,
            (ev(31, at(5, 12), "sealed", "carol", C_ID), ev(32, at(5, 12, 1), "sent", "node")),
            category="drug-trafficking",
            tlp="GREEN",
        ),
        message(
            5,
            "outbound",
            B_ID,
            (ev(14, at(2, 15), "sealed", "alice", B_ID), ev(40, at(4, 15), "expired", "node")),
            state="expired",
        ),
    )
    verification = ReportVerification(
        verified=True,
        size=41,
        root_hex=ROOT,
        problem=None,
        seq=None,
        checkpoint=ReportCheckpoint(41, ROOT, at(6, 0), (B_ID, C_ID)),
    )
    return ReportData(
        agency_id=A_ID,
        generated_at=at(29, 12),
        scope="case MA-2026-0042",
        messages=messages,
        verification=verification,
        other_events=(
            ev(1, at(1, 8), "key-rotated", "admin", detail="new signing key"),
            ev(2, at(1, 9), "peer-refused", "", HOSTILE, "RATE_LIMITED", HOSTILE),
        ),
    )


def shown(text: str) -> str:
    """What a person reads for a peer's ``text``: the CLI's escaped form."""
    return safe(text)


# ---- a small DOM, for the HTML we write and for the DOM Chromium built -------------

VOID_TAGS = {"meta", "link", "br", "hr", "img", "input", "source", "wbr", "col", "area", "base"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = field(default_factory=list)

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def words(self) -> str:
        return " ".join(self.text().split())

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.walk()

    def all(self, tag: str, css: str | None = None) -> list[Node]:
        return [
            n
            for n in self.walk()
            if n.tag == tag and (css is None or css in n.attrs.get("class", "").split())
        ]

    def by_id(self, name: str) -> Node:
        (found,) = [n for n in self.walk() if n.attrs.get("id") == name]
        return found


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID_TAGS:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        if any(n.tag == tag for n in self.stack[1:]):
            while self.stack.pop().tag != tag:
                pass

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(page: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(page)
    builder.close()
    return builder.root


def facts(section: Node) -> dict[str, str]:
    """A message's ``<dl>``: each term and the words of its description."""
    (dl,) = section.all("dl")
    pairs = [n for n in dl.children if isinstance(n, Node)]
    return {
        term.words(): value.words() for term, value in zip(pairs[::2], pairs[1::2], strict=True)
    }


def timeline_rows(section: Node) -> list[list[str]]:
    (table,) = section.all("table", "timeline")
    return [[td.text().strip() for td in tr.all("td")] for tr in table.all("tbody")[0].all("tr")]


def expected_rows(events: tuple[ReportEvent, ...]) -> list[list[str]]:
    return [
        [
            str(e.seq),
            e.at.isoformat().replace("+00:00", "Z"),
            e.event,
            shown(e.actor) or "—",
            shown(e.peer) or "—",
            " ".join(x for x in (shown(e.reason), shown(e.detail)) if x),
        ]
        for e in events
    ]


def bars(dom: Node, chart: str) -> list[tuple[str, float, float]]:
    """Each bar of a chart: its ``<title>``, its height and its width."""
    return [
        (rect.all("title")[0].text(), float(rect.attrs["height"]), float(rect.attrs["width"]))
        for rect in dom.by_id(chart).all("rect", "bar")
    ]


# Each bar as the data gives it: by the day of a message's first event, and by category.
DAY_BARS = {
    "2026-11-02: 2 outbound": 2,
    "2026-11-02: 1 inbound": 1,
    "2026-11-05: 1 outbound": 1,
    "2026-11-05: 1 inbound": 1,
}
CATEGORY_BARS = {
    "terrorism: 2 messages (2 outbound, 0 inbound)": 2,
    f"{shown(HOSTILE)}: 1 message (0 outbound, 1 inbound)": 1,
    "drug-trafficking: 1 message (1 outbound, 0 inbound)": 1,
    "unknown: 1 message (0 outbound, 1 inbound)": 1,
}


def assert_bars(dom: Node) -> None:
    """The bars' titles give the exact counts, and their sizes agree with them."""
    days = bars(dom, "chart-days")
    unit = min(h for _, h, _ in days)
    assert {title: round(h / unit, 2) for title, h, _ in days} == DAY_BARS
    categories = bars(dom, "chart-categories")
    unit = min(w for _, _, w in categories)
    assert {title: round(w / unit, 2) for title, _, w in categories} == CATEGORY_BARS
    assert [title for title, _, _ in categories] == list(CATEGORY_BARS)  # most first


def assert_only_report_markup(dom: Node) -> None:
    """Hostile text added no element and no attribute: it is all text."""
    assert {n.tag for n in dom.walk()} - {"#document"} <= REPORT_TAGS
    for node in dom.walk():
        assert not any(name.startswith("on") for name in node.attrs), node
        assert node.attrs.get("href", "#").startswith("#"), node


# ---- the HTML string --------------------------------------------------------------


def test_every_message_id_and_case_reference_is_in_the_report() -> None:
    data = sample()
    page = render_html(data)
    for m in data.messages:
        assert m.message_id in page
        assert html.escape(shown(m.case_reference or ""), quote=True) in page
    dom = parse(page)
    sections = [dom.by_id(f"m{n}") for n in range(1, 6)]
    for section, m in zip(sections, data.messages, strict=True):
        assert m.message_id in section.all("h3")[0].text()
        assert facts(section)["Case reference"] == shown(m.case_reference or "")
        assert timeline_rows(section) == expected_rows(m.events)


def everything_hostile(text: str) -> ReportData:
    """``sample()`` with ``text`` in every string a record holds."""

    def bent(record: object) -> object:
        assert dataclasses.is_dataclass(record)
        assert not isinstance(record, type)
        changes: dict[str, object] = {}
        for f in dataclasses.fields(record):
            value = getattr(record, f.name)
            if isinstance(value, str):
                changes[f.name] = text
            elif dataclasses.is_dataclass(value):
                changes[f.name] = bent(value)
            elif isinstance(value, tuple):
                changes[f.name] = tuple(
                    bent(v) if dataclasses.is_dataclass(v) else text for v in value
                )
        return dataclasses.replace(record, **changes)

    data = bent(sample())
    assert isinstance(data, ReportData)
    return data


@pytest.mark.parametrize("name", HOSTILE_PARTS)
def test_hostile_text_is_shown_as_text_in_every_field(name: str) -> None:
    text = f"x{HOSTILE_PARTS[name]}y"
    page = render_html(everything_hostile(text))
    assert text not in page
    assert first_control_character(page, multiline=True) is None
    assert "<script" not in page.lower()
    assert html.escape(shown(text), quote=True) in page
    dom = parse(page)
    assert_only_report_markup(dom)
    # The reason, then the detail.
    assert dom.by_id("m1").all("td", "detail")[0].text() == f"{shown(text)} {shown(text)}"


def test_a_lone_surrogate_is_shown_as_an_escape() -> None:
    page = render_html(everything_hostile("a\udc80b"))
    page.encode("utf-8")  # no lone surrogate left to fail the file's encoding
    assert "a\\udc80b" in page


def test_the_report_loads_nothing_and_runs_nothing() -> None:
    page = render_html(sample())
    lower = page.lower()
    for banned in ("<script", "http://", "https://", "javascript:"):
        assert banned not in lower
    dom = parse(page)
    (style,) = dom.all("style")
    assert "url(" not in style.text()
    assert "@import" not in style.text()
    assert not any({"src", "srcset", "xlink:href"} & n.attrs.keys() for n in dom.walk())
    head = page[: page.index("</head>")]
    csp = f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'
    assert CONTENT_SECURITY_POLICY == (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
    )
    assert csp in head
    assert head.index(csp) < head.index("<style")
    assert_only_report_markup(dom)


def test_the_banner_says_the_log_verifies_and_who_cosigned_it() -> None:
    banner = parse(render_html(sample())).by_id("verdict")
    assert banner.attrs["class"].split() == ["banner", "ok"]
    assert banner.words() == (
        f"✔ Audit log verified: 41 events, root {ROOT}, checkpoint size 41, "
        f"cosigned by {B_ID}, {C_ID}"
    )


def test_a_log_that_does_not_verify_has_the_red_banner_with_problem_and_event() -> None:
    data = sample()
    problem = "entry <b>12</b> does not match its event"
    failing = dataclasses.replace(
        data,
        verification=ReportVerification(False, 41, ROOT, problem, 12, None),
    )
    page = render_html(failing)
    dom = parse(page)
    banner = dom.by_id("verdict")
    assert banner.attrs["class"].split() == ["banner", "bad"]
    assert banner.words() == f"✘ Audit log does NOT verify: {problem} at event 12"
    assert "<b>" not in page
    (bad_row,) = [tr for tr in dom.all("tr") if "bad" in tr.attrs.get("class", "").split()]
    assert bad_row.all("td")[0].text() == "12"


@pytest.mark.parametrize(
    ("checkpoint", "problem"),
    [
        (ReportCheckpoint(50, ROOT, None, ()), "the log holds 41 events but its signed "),
        (ReportCheckpoint(41, "00" * 32, None, ()), "the log's root at 41 events is not "),
    ],
)
def test_a_log_that_disagrees_with_its_signed_checkpoint_does_not_verify(
    checkpoint: ReportCheckpoint, problem: str
) -> None:
    data = sample()
    verification = dataclasses.replace(data.verification, checkpoint=checkpoint)
    dom = parse(render_html(dataclasses.replace(data, verification=verification)))
    banner = dom.by_id("verdict")
    assert "bad" in banner.attrs["class"].split()
    assert banner.words().startswith(f"✘ Audit log does NOT verify: {problem}")


def test_an_empty_report_renders() -> None:
    data = ReportData(
        agency_id=A_ID,
        generated_at=at(29, 12),
        scope="2026-11-01 to 2026-11-29",
        messages=(),
        verification=ReportVerification(True, 0, "00" * 32, None, None, None),
    )
    page = render_html(data)
    dom = parse(page)
    assert dom.by_id("verdict").words() == (
        f"✔ Audit log verified: 0 events, root {'00' * 32}, no signed checkpoint"
    )
    assert "No messages in scope." in dom.by_id("messages").words()
    assert "No other event in scope." in dom.by_id("other-events").words()
    assert not dom.all("svg")
    assert_only_report_markup(dom)


def test_reads_and_acknowledgements_say_who_and_when() -> None:
    dom = parse(render_html(sample()))
    first, second, third = (facts(dom.by_id(f"m{n}")) for n in (1, 2, 3))
    assert first["Read by"] == f"read by {B_ID} (peer) at 2026-11-03T08:00:00Z"
    assert first["Acknowledged"] == f"action-taken by {B_ID} (peer) at 2026-11-03T09:00:00Z"
    assert second["Read by"] == "read by bob at 2026-11-04T11:00:00Z"
    assert second["Acknowledged"] == "acknowledged by bob at 2026-11-04T12:00:00Z"
    assert third["Read by"] == "no read recorded"
    assert third["Acknowledged"] == "no acknowledgement recorded"


def test_the_charts_count_messages_per_day_and_per_category() -> None:
    assert_bars(parse(render_html(sample())))


def test_times_are_utc_with_z_and_a_naive_time_is_refused() -> None:
    data = sample()
    paris = dt.timezone(dt.timedelta(hours=1))
    moved = dataclasses.replace(data, generated_at=dt.datetime(2026, 11, 29, 13, tzinfo=paris))
    (header,) = parse(render_html(moved)).all("header")
    assert facts(header)["Generated"] == "2026-11-29T12:00:00Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        render_html(dataclasses.replace(data, generated_at=dt.datetime(2026, 11, 29, 12)))


def test_the_same_data_gives_the_same_bytes() -> None:
    assert render_html(sample()) == render_html(sample())


# ---- in a browser -----------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("LIAISON_REQUIRE_CHROMIUM"):
            pytest.fail("LIAISON_REQUIRE_CHROMIUM is set but chromium is not installed")
        pytest.skip("needs Debian's chromium (apt-get install chromium); CI requires it")
    return found


def run_chromium(chromium: str, folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """One headless Chromium run, with its console (CSP reports) on stderr."""
    return subprocess.run(
        [
            chromium,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={folder / 'profile'}",
            "--force-color-profile=srgb",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            *args,
        ],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=CHROMIUM_TIMEOUT_SECONDS,
        check=True,
    )


@dataclass(frozen=True)
class Browsed:
    dom: Node
    console: str


@pytest.fixture(scope="module")
def browsed(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Browsed:
    """The DOM Chromium built from the written report (one launch for the module)."""
    folder = tmp_path_factory.mktemp("report")
    page = folder / "report.html"
    page.write_text(render_html(sample()), encoding="utf-8")
    done = run_chromium(chromium, folder, "--dump-dom", page.as_uri())
    return Browsed(parse(done.stdout), done.stderr)


def test_browser_shows_the_green_banner(browsed: Browsed) -> None:
    banner = browsed.dom.by_id("verdict")
    assert "ok" in banner.attrs["class"].split()
    assert banner.words() == (
        f"✔ Audit log verified: 41 events, root {ROOT}, checkpoint size 41, "
        f"cosigned by {B_ID}, {C_ID}"
    )


def test_browser_shows_each_timeline_and_who_read_it(browsed: Browsed) -> None:
    data = sample()
    for n, m in enumerate(data.messages, 1):
        section = browsed.dom.by_id(f"m{n}")
        assert timeline_rows(section) == expected_rows(m.events)
    assert facts(browsed.dom.by_id("m2"))["Read by"] == "read by bob at 2026-11-04T11:00:00Z"
    other = browsed.dom.by_id("other-events")
    assert timeline_rows(other) == expected_rows(data.other_events)


def test_browser_draws_one_bar_per_count(browsed: Browsed) -> None:
    assert_bars(browsed.dom)


def test_browser_keeps_hostile_strings_as_text_and_loads_nothing(browsed: Browsed) -> None:
    dom = browsed.dom
    assert_only_report_markup(dom)
    assert not dom.all("script")
    assert not dom.all("img")
    index = dom.by_id("messages").all("table", "index")[0]
    second = index.all("tbody")[0].all("tr")[1]
    assert [td.text() for td in second.all("td")][3:6] == [shown(HOSTILE)] * 3
    assert shown(HOSTILE).startswith("<script>alert(1)</script>")
    assert "Content Security Policy" not in browsed.console
    assert "Uncaught" not in browsed.console


# ---- a screenshot -----------------------------------------------------------------


def _unfilter(kind: int, line: bytearray, prev: bytearray, bpp: int) -> None:
    """Undo one PNG scanline filter in place (PNG specification, section 9)."""
    n = len(line)
    if kind == 1:
        for i in range(bpp, n):
            line[i] = (line[i] + line[i - bpp]) & 0xFF
    elif kind == 2:  # the bytewise sum of two rows, as two big integers without carries
        low7, high = int.from_bytes(b"\x7f" * n, "big"), int.from_bytes(b"\x80" * n, "big")
        x, y = int.from_bytes(line, "big"), int.from_bytes(prev, "big")
        line[:] = (((x & low7) + (y & low7)) ^ ((x ^ y) & high)).to_bytes(n, "big")
    elif kind == 3:
        for i in range(n):
            left = line[i - bpp] if i >= bpp else 0
            line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
    elif kind == 4:
        for i in range(bpp):
            line[i] = (line[i] + prev[i]) & 0xFF
        for i in range(bpp, n):
            a, b, c = line[i - bpp], prev[i], prev[i - bpp]
            pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - c - c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF


def png_colours(data: bytes, step: int) -> tuple[tuple[int, int], dict[bytes, int]]:
    """The size of an 8-bit RGB(A) PNG, and its colours on a grid of every ``step`` pixels."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (size,) = struct.unpack(">I", data[pos : pos + 4])
        chunks.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + size]))
        pos += 12 + size
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour_type in (2, 6), interlace) == (8, True, 0)
    bpp = 3 if colour_type == 2 else 4
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = width * bpp
    prev = bytearray(stride)
    colours: Counter[bytes] = Counter()
    for y in range(height):
        start = y * (stride + 1)
        line = bytearray(raw[start + 1 : start + 1 + stride])
        _unfilter(raw[start], line, prev, bpp)
        if y % step == 0:
            colours.update(bytes(line[x : x + 3]) for x in range(0, stride, bpp * step))
        prev = line
    return (width, height), colours


def test_browser_screenshot_shows_the_banner_and_the_bars(chromium: str, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_html(sample()), encoding="utf-8")
    shot = tmp_path / "report.png"
    width, height = SCREEN
    size = f"--window-size={width},{height}"
    run_chromium(chromium, tmp_path, f"--screenshot={shot}", size, page.as_uri())
    step = 2  # a pixel in four is enough to see what is there
    dimensions, colours = png_colours(shot.read_bytes(), step)
    assert dimensions == SCREEN
    assert len(colours) > 50  # text, tables, charts: not a blank page
    banner_green, bar_navy = bytes.fromhex("e7f4eb"), bytes.fromhex("1f3a5f")
    assert colours[banner_green] * step * step > 20_000  # the banner, large
    assert colours[bar_navy] * step * step > 5_000  # the outbound bars
