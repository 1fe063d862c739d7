"""The audit report: one self-contained HTML page for an auditor's browser.

``render_html`` turns what a node knows about a case or a time range (each
message's metadata and audit events, the events with no message, and the
audit log's verification) into one HTML document that needs no server, no
network and no script: the charts are inline SVG drawn here, the styles are
inline, and the page's Content-Security-Policy lets it load nothing. The
report shows metadata and digests, never a notice's content: the data model
carries none.

Every string of the data is hostile (a peer wrote many of them): each control
or bidi character (``liaison.keys.text``), and a lone surrogate, is shown as
an escape such as ``\\u202e``, never as itself, and the result is HTML-escaped
wherever it goes, text, attribute or SVG. The same data gives the same bytes.
"""

from __future__ import annotations

import datetime as dt
import html
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from liaison.keys.text import control_characters

__all__ = [
    "ACKNOWLEDGEMENT_EVENTS",
    "CONTENT_SECURITY_POLICY",
    "ReportCheckpoint",
    "ReportData",
    "ReportEvent",
    "ReportMessage",
    "ReportVerification",
    "render_html",
]


@dataclass(frozen=True)
class ReportEvent:
    seq: int  # audit log sequence number (leaf index + 1)
    at: dt.datetime  # aware UTC
    event: str  # "sealed", "sent", "delivered", "received", "read", "acknowledged", ...
    actor: str  # "" if none: an operator's name, "node", "admin"
    peer: str  # the other agency's id, or ""
    reason: str  # a reject reason's name, or ""
    detail: str  # words for people: ids, digests, reasons


@dataclass(frozen=True)
class ReportMessage:
    message_id: str
    direction: str  # "outbound" | "inbound"
    peer: str  # the other agency
    case_reference: str | None
    category: str | None  # "terrorism", "drug-trafficking", ...; None if unknown
    tlp: str | None  # "CLEAR" | "GREEN" | "AMBER" | "AMBER+STRICT" | "RED", or None
    priority: str | None
    state: str  # "delivered", "acknowledged", "action-taken", "failed", ...
    envelope_sha256: str | None
    events: tuple[ReportEvent, ...]  # in seq order


@dataclass(frozen=True)
class ReportCheckpoint:
    size: int
    root_hex: str
    signed_at: dt.datetime | None
    cosigners: tuple[str, ...]  # agency ids whose cosignature was verified


@dataclass(frozen=True)
class ReportVerification:
    verified: bool
    size: int
    root_hex: str
    problem: str | None
    seq: int | None
    checkpoint: ReportCheckpoint | None


@dataclass(frozen=True)
class ReportData:
    agency_id: str
    generated_at: dt.datetime
    scope: str  # "case MA-2026-0042", "2026-11-01 to 2026-11-29"
    messages: tuple[ReportMessage, ...]
    verification: ReportVerification
    other_events: tuple[ReportEvent, ...] = ()  # key, peer, access-denied events ...


CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
# The events that record an acknowledgement: given here ("acknowledged", whose detail
# starts with the status) or by the peer ("acknowledged-by-peer", the status its detail).
ACKNOWLEDGEMENT_EVENTS = frozenset(
    {"acknowledged", "action-taken", "declined", "peer-acknowledged", "acknowledged-by-peer"}
)
_PEER_ACKNOWLEDGEMENTS = frozenset({"peer-acknowledged", "acknowledged-by-peer"})
_ACKNOWLEDGEMENT_STATUSES = frozenset({"read", "acknowledged", "action-taken", "declined"})
_FLAGGED_EVENTS = frozenset({"rejected", "rejected-by-peer", "receipt-invalid", "expired"})
_UNDELIVERED_STATES = frozenset({"failed", "expired"})
_TLP_ORDER = ("CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_CHART_LABEL_CHARS = 32


# ---- hostile text -------------------------------------------------------------------


def _escape_char(found: re.Match[str]) -> str:
    char = found[0]
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def _plain(text: str) -> str:
    """``text`` with each control, bidi and lone surrogate character written as an escape."""
    return _SURROGATE.sub(_escape_char, control_characters().sub(_escape_char, text))


def _h(text: str) -> str:
    """``text`` safe in HTML and SVG, in text and in a quoted attribute."""
    return html.escape(_plain(text), quote=True)


def _bdi(text: str, *, empty: str = "—") -> str:
    """Inline peer text, isolated so that right-to-left text cannot move what is around it."""
    return f"<bdi>{_h(text)}</bdi>" if text else empty


def _utc(moment: dt.datetime) -> dt.datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("report times must be timezone-aware")
    return moment.astimezone(dt.UTC)


def _iso(moment: dt.datetime) -> str:
    return _utc(moment).isoformat().replace("+00:00", "Z")


# ---- what the report derives --------------------------------------------------------


@dataclass(frozen=True)
class _Answer:
    """One read or acknowledgement of a message: its status, who gave it, when."""

    status: str
    who: str
    by_peer: bool
    at: dt.datetime


def _answers(message: ReportMessage) -> tuple[list[_Answer], list[_Answer]]:
    """Who read the message, and who acknowledged it, in event order."""
    reads: list[_Answer] = []
    acknowledgements: list[_Answer] = []
    for e in message.events:
        if e.event == "read":
            reads.append(_Answer("read", e.actor, False, e.at))
        elif e.event in ACKNOWLEDGEMENT_EVENTS:
            by_peer = e.event in _PEER_ACKNOWLEDGEMENTS
            status = _acknowledgement_status(e)
            who = (e.peer or message.peer) if by_peer else e.actor
            answer = _Answer(status, who, by_peer, e.at)
            (reads if status == "read" else acknowledgements).append(answer)
    return reads, acknowledgements


def _acknowledgement_status(e: ReportEvent) -> str:
    if e.event in ("action-taken", "declined"):
        return e.event
    # Only a status the protocol defines is taken from the detail; anything else is
    # shown as the plain event, and the detail stays in the timeline.
    first_word = e.detail.split(";", 1)[0].strip()
    return first_word if first_word in _ACKNOWLEDGEMENT_STATUSES else "acknowledged"


def _first_day(message: ReportMessage) -> dt.date | None:
    if not message.events:
        return None
    return min(_utc(e.at).date() for e in message.events)


def _day_traffic(messages: Iterable[ReportMessage]) -> list[tuple[dt.date, int, int]]:
    """(day, outbound, inbound) for every day from the first to the last with traffic."""
    outbound: Counter[dt.date] = Counter()
    inbound: Counter[dt.date] = Counter()
    for m in messages:
        day = _first_day(m)
        if day is not None and m.direction == "outbound":
            outbound[day] += 1
        elif day is not None and m.direction == "inbound":
            inbound[day] += 1
    days = set(outbound) | set(inbound)
    if not days:
        return []
    first, last = min(days), max(days)
    span = (last - first).days + 1
    every = (first + dt.timedelta(days=n) for n in range(span))
    return [(day, outbound[day], inbound[day]) for day in every]


def _category_counts(messages: Iterable[ReportMessage]) -> list[tuple[str, int, int]]:
    """(category, outbound, inbound), the most frequent first; ``None`` is "unknown"."""
    outbound: Counter[str] = Counter()
    inbound: Counter[str] = Counter()
    for m in messages:
        name = m.category if m.category is not None else "unknown"
        outbound[name] += m.direction == "outbound"
        inbound[name] += m.direction == "inbound"
    names = sorted(set(outbound) | set(inbound), key=lambda c: (-outbound[c] - inbound[c], c))
    return [(c, outbound[c], inbound[c]) for c in names]


def _tlp_key(tlp: str | None) -> str | None:
    if tlp is None:
        return None
    key = tlp.strip().upper().removeprefix("TLP:")
    return key if key in _TLP_ORDER else None


def _verdict(v: ReportVerification) -> tuple[bool, str]:
    """Whether the log verifies, and the banner's words as HTML.

    A log that verifies on its own but holds fewer events than its signed
    checkpoint, or another root at the checkpoint's size, does not verify.
    """
    problem = _checkpoint_problem(v) if v.verified else (v.problem or "no reason given")
    if problem is not None:
        where = f" at event {v.seq:d}" if not v.verified and v.seq is not None else ""
        return False, f"Audit log does NOT verify: {_bdi(problem)}{where}"
    cp = v.checkpoint
    if cp is None:
        signed = "no signed checkpoint"
    else:
        cosigners = ", ".join(_bdi(c) for c in cp.cosigners)
        cosigned = f"cosigned by {cosigners}" if cosigners else "no verified cosignature"
        signed = f"checkpoint size {cp.size:d}, {cosigned}"
    root = f'<code class="wrap">{_h(v.root_hex)}</code>'
    return True, f"Audit log verified: {v.size:d} events, root {root}, {signed}"


def _checkpoint_problem(v: ReportVerification) -> str | None:
    cp = v.checkpoint
    if cp is not None and cp.size > v.size:
        return f"the log holds {v.size:d} events but its signed checkpoint covers {cp.size:d}"
    if cp is not None and cp.size == v.size and cp.root_hex.lower() != v.root_hex.lower():
        return f"the log's root at {v.size:d} events is not its signed checkpoint's root"
    return None


# ---- charts -------------------------------------------------------------------------


def _f(value: float) -> str:
    return f"{value:.1f}"


def _steps() -> Iterator[int]:
    scale = 1
    while True:
        yield from (scale, 2 * scale, 5 * scale)
        scale *= 10


def _ticks(largest: int) -> list[int]:
    """Axis ticks from 0: at most six, a round step apart, the last at or above ``largest``."""
    step = next(s for s in _steps() if math.ceil(largest / s) <= 5)
    top = max(1, math.ceil(largest / step)) * step
    return list(range(0, top + 1, step))


def _short(text: str) -> str:
    plain = _plain(text)
    if len(plain) <= _CHART_LABEL_CHARS:
        return html.escape(plain, quote=True)
    return html.escape(plain[: _CHART_LABEL_CHARS - 1], quote=True) + "…"


def _day_chart(days: list[tuple[dt.date, int, int]]) -> str:
    """Grouped vertical bars, outbound then inbound, one group per day."""
    width, height, left, right, top, bottom = 960, 320, 56, 16, 34, 86
    plot_w, plot_h = width - left - right, height - top - bottom
    ticks = _ticks(max(max(o, i) for _, o, i in days))
    scale = plot_h / ticks[-1]
    slot = plot_w / len(days)
    bar = min(28.0, slot * 0.38)
    base = top + plot_h
    parts = [_y_axis(ticks, left=left, right=width - right, base=base, scale=scale)]
    label_every = math.ceil(len(days) / 24)
    for n, (day, out_count, in_count) in enumerate(days):
        middle = left + (n + 0.5) * slot
        for count, x, kind in (
            (out_count, middle - bar - 1, "outbound"),
            (in_count, middle + 1, "inbound"),
        ):
            if count:
                parts.append(
                    _bar_v(x, base, bar, count * scale, kind=kind, title=f"{day}: {count} {kind}")
                )
                if bar >= 10:
                    parts.append(
                        f'<text x="{_f(x + bar / 2)}" y="{_f(base - count * scale - 3)}" '
                        f'text-anchor="middle" class="value">{count}</text>'
                    )
        if n % label_every == 0:
            parts.append(
                f'<text x="{_f(middle)}" y="{base + 14}" text-anchor="end" '
                f'transform="rotate(-40 {_f(middle)} {base + 14})">{day}</text>'
            )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle" '
        'class="axis-title">Day (UTC) of each message\'s first event</text>'
    )
    parts.append(_legend(left, 14))
    return _svg("chart-days", "Messages per day, outbound and inbound", width, height, parts)


def _bar_v(x: float, base: float, bar: float, size: float, *, kind: str, title: str) -> str:
    return (
        f'<rect class="bar bar-{kind}" x="{_f(x)}" y="{_f(base - size)}" width="{_f(bar)}" '
        f'height="{_f(size)}"><title>{_h(title)}</title></rect>'
    )


def _y_axis(ticks: list[int], *, left: int, right: int, base: int, scale: float) -> str:
    lines = []
    for tick in ticks:
        y = _f(base - tick * scale)
        lines.append(f'<line class="grid" x1="{left}" y1="{y}" x2="{right}" y2="{y}"/>')
        lines.append(f'<text x="{left - 6}" y="{y}" dy="4" text-anchor="end">{tick}</text>')
    lines.append(f'<line class="axis" x1="{left}" y1="{base}" x2="{right}" y2="{base}"/>')
    middle = _f(base - ticks[-1] * scale / 2)
    lines.append(
        f'<text x="14" y="{middle}" text-anchor="middle" class="axis-title" '
        f'transform="rotate(-90 14 {middle})">Messages</text>'
    )
    return "\n".join(lines)


def _legend(x: int, y: int) -> str:
    return (
        f'<rect class="legend bar-outbound" x="{x}" y="{y - 9}" width="10" height="10"/>'
        f'<text x="{x + 14}" y="{y}">outbound</text>'
        f'<rect class="legend bar-inbound" x="{x + 84}" y="{y - 9}" width="10" height="10"/>'
        f'<text x="{x + 98}" y="{y}">inbound</text>'
    )


def _category_chart(categories: list[tuple[str, int, int]]) -> str:
    """One horizontal bar per category, its total at its end."""
    row, thickness, top, bottom, right = 26, 16, 8, 44, 40
    longest = max(len(_plain(c)[:_CHART_LABEL_CHARS]) for c, _, _ in categories)
    left = min(260, max(90, 7 * longest + 16))
    width, height = 960, top + row * len(categories) + bottom
    plot_w = width - left - right
    ticks = _ticks(max(o + i for _, o, i in categories))
    scale = plot_w / ticks[-1]
    base = top + row * len(categories)
    parts = []
    for tick in ticks:
        x = _f(left + tick * scale)
        parts.append(f'<line class="grid" x1="{x}" y1="{top}" x2="{x}" y2="{base}"/>')
        parts.append(f'<text x="{x}" y="{base + 16}" text-anchor="middle">{tick}</text>')
    parts.append(f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{base}"/>')
    for n, (name, out_count, in_count) in enumerate(categories):
        total = out_count + in_count
        y = top + n * row + (row - thickness) / 2
        plural = "" if total == 1 else "s"
        title = f"{name}: {total} message{plural} ({out_count} outbound, {in_count} inbound)"
        parts.append(
            f'<text x="{left - 8}" y="{_f(y + thickness - 4)}" text-anchor="end" '
            f'direction="ltr">{_short(name)}</text>'
        )
        parts.append(
            f'<rect class="bar bar-category" x="{left}" y="{_f(y)}" '
            f'width="{_f(total * scale)}" height="{thickness}"><title>{_h(title)}</title></rect>'
        )
        parts.append(
            f'<text x="{_f(left + total * scale + 4)}" y="{_f(y + thickness - 4)}" '
            f'class="value">{total}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle" '
        'class="axis-title">Messages</text>'
    )
    return _svg("chart-categories", "Messages per category", width, height, parts)


def _svg(name: str, title: str, width: int, height: int, parts: list[str]) -> str:
    return (
        f'<svg id="{name}" class="chart" viewBox="0 0 {width} {height}" width="100%" '
        f'role="img" aria-labelledby="{name}-title">\n'
        f'<title id="{name}-title">{title}</title>\n' + "\n".join(parts) + "\n</svg>"
    )


# ---- the page -----------------------------------------------------------------------


def render_html(data: ReportData) -> str:
    """The audit report for ``data`` as one self-contained HTML document.

    Guarantees: no script, no reference to anything outside the document (its
    Content-Security-Policy forbids any load), every string of ``data`` shown
    as text with its control and bidi characters escaped, the same output for
    the same ``data``. Raises ``ValueError`` if a time of ``data`` is naive.
    """
    title = f"Audit report — {data.agency_id} — {data.scope}"
    body = [
        _header(data),
        _banner(data.verification),
        _summary(data),
        _verification(data),
        _charts(data.messages),
        _messages(data.messages, data.verification.seq),
        _other_events(data.other_events, data.verification.seq),
        _footer(data),
    ]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">\n'
        '<meta name="referrer" content="no-referrer">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_h(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        "<body>\n<main>\n" + "\n".join(body) + "\n</main>\n</body>\n</html>\n"
    )


def _header(data: ReportData) -> str:
    levels = [k for k in (_tlp_key(m.tlp) for m in data.messages) if k is not None]
    handling = ""
    if levels:
        highest = max(levels, key=_TLP_ORDER.index)
        handling = (
            '<p class="handling">Holds metadata of messages marked up to '
            f"{_tlp_badge(highest)}; handle this report accordingly.</p>"
        )
    return (
        '<header class="report">\n<p class="kicker">Liaison Exchange · audit report</p>\n'
        f"<h1>{_bdi(data.agency_id)}</h1>\n"
        '<dl class="meta">'
        f"<dt>Scope</dt><dd>{_bdi(data.scope)}</dd>"
        f"<dt>Generated</dt><dd>{_iso(data.generated_at)}</dd>"
        "<dt>Content</dt><dd>metadata, audit events and digests only; no notice content"
        f"</dd></dl>\n{handling}\n</header>"
    )


def _banner(v: ReportVerification) -> str:
    ok, words = _verdict(v)
    mark = "✔" if ok else "✘"
    return (
        f'<div id="verdict" class="banner {"ok" if ok else "bad"}" role="status">'
        f'<span aria-hidden="true">{mark}</span> {words}</div>'
    )


def _summary(data: ReportData) -> str:
    messages = data.messages
    answered = [_answers(m) for m in messages]
    flagged = sum(
        m.state in _UNDELIVERED_STATES or any(e.event in _FLAGGED_EVENTS for e in m.events)
        for m in messages
    )
    numbers = [
        ("Messages", len(messages)),
        ("Outbound", sum(m.direction == "outbound" for m in messages)),
        ("Inbound", sum(m.direction == "inbound" for m in messages)),
        ("Peers", len({m.peer for m in messages})),
        ("Audit events shown", sum(len(m.events) for m in messages) + len(data.other_events)),
        ("Read", sum(bool(reads) for reads, _ in answered)),
        ("Acknowledged", sum(bool(acks) for _, acks in answered)),
        ("Failed, expired or rejected", flagged),
    ]
    cards = "".join(
        f'<div class="card"><div class="n">{n:d}</div><div class="l">{label}</div></div>'
        for label, n in numbers
    )
    return f'<section id="summary">\n<h2>Summary</h2>\n<div class="cards">{cards}</div>\n</section>'


def _verification(data: ReportData) -> str:
    v = data.verification
    ok, _ = _verdict(v)
    rows = [
        ("Result", "verifies" if ok else "<strong>does not verify</strong>"),
        ("Events in the log", f"{v.size:d}"),
        ("Merkle root", f'<code class="wrap">{_h(v.root_hex)}</code>'),
    ]
    if not v.verified:
        rows.append(("Problem", _bdi(v.problem or "no reason given")))
        rows.append(("First bad event", f"{v.seq:d}" if v.seq is not None else "—"))
    elif not ok:
        rows.append(("Problem", _bdi(_checkpoint_problem(v) or "")))
    cp = v.checkpoint
    if cp is None:
        rows.append(("Signed checkpoint", "none"))
    else:
        cosigners = ", ".join(_bdi(c) for c in cp.cosigners) or "none verified"
        signed_at = _iso(cp.signed_at) if cp.signed_at is not None else "not recorded"
        rows += [
            ("Checkpoint size", f"{cp.size:d} events"),
            ("Checkpoint root", f'<code class="wrap">{_h(cp.root_hex)}</code>'),
            ("Checkpoint signed", signed_at),
            ("Cosigned by", cosigners),
        ]
    table = "".join(f'<tr><th scope="row">{k}</th><td>{v}</td></tr>' for k, v in rows)
    return (
        '<section id="verification">\n<h2>Audit log verification</h2>\n'
        '<p class="note">The Merkle tree is recomputed over every event of the node\'s '
        "audit log, not only the events of this report; a sequence number below names "
        "an event of that log.</p>\n"
        f'<table class="facts"><tbody>{table}</tbody></table>\n</section>'
    )


def _charts(messages: tuple[ReportMessage, ...]) -> str:
    if not messages:
        return (
            '<section id="charts">\n<h2>Traffic</h2>\n'
            '<p class="empty">No messages in scope.</p>\n</section>'
        )
    days = _day_traffic(messages)
    undated = sum(not m.events for m in messages)
    day_figure = _day_chart(days) if days else '<p class="empty">No message with a dated event.</p>'
    note = (
        f'<p class="note">{undated:d} message(s) with no event in scope are not charted.</p>'
        if undated
        else ""
    )
    day_rows = "".join(
        f'<tr><td>{day}</td><td class="num">{o}</td><td class="num">{i}</td>'
        f'<td class="num">{o + i}</td></tr>'
        for day, o, i in days
        if o or i
    )
    categories = _category_counts(messages)
    category_rows = "".join(
        f'<tr><td class="free">{_h(c)}</td><td class="num">{o}</td><td class="num">{i}</td>'
        f'<td class="num">{o + i}</td></tr>'
        for c, o, i in categories
    )
    head = (
        '<thead><tr><th scope="col">{}</th><th class="num" scope="col">Outbound</th>'
        '<th class="num" scope="col">Inbound</th><th class="num" scope="col">Total</th>'
        "</tr></thead>"
    )
    return (
        '<section id="charts">\n<h2>Traffic</h2>\n'
        '<figure id="days"><figcaption>Messages per day (UTC), by the day of each '
        f"message's first audit event</figcaption>\n{day_figure}\n{note}"
        f'<table class="counts">{head.format("Day (UTC)")}<tbody>{day_rows}</tbody></table>'
        "</figure>\n"
        '<figure id="categories"><figcaption>Messages per category</figcaption>\n'
        f"{_category_chart(categories)}\n"
        f'<table class="counts">{head.format("Category")}<tbody>{category_rows}</tbody>'
        "</table></figure>\n</section>"
    )


def _tlp_badge(tlp: str | None) -> str:
    if tlp is None:
        return "not marked"
    key = _tlp_key(tlp)
    if key is None:
        return f'<span class="tlp tlp-unknown">{_h(tlp)}</span>'
    css = key.lower().replace("+", "-")
    return f'<span class="tlp tlp-{css}">TLP:{key}</span>'


def _messages(messages: tuple[ReportMessage, ...], bad_seq: int | None) -> str:
    if not messages:
        return (
            '<section id="messages">\n<h2>Messages</h2>\n'
            '<p class="empty">No messages in scope.</p>\n</section>'
        )
    index = "".join(
        f'<tr><td class="num">{n}</td><td class="free id"><a href="#m{n}"><code>'
        f'{_h(m.message_id)}</code></a></td><td class="nw">{_h(m.direction)}</td>'
        f'<td class="free">{_bdi(m.peer)}</td><td class="free">{_bdi(m.case_reference or "")}'
        f'</td><td class="free">{_h(m.category or "unknown")}</td>'
        f'<td>{_tlp_badge(m.tlp)}</td><td class="nw">{_h(m.state)}</td>'
        f'<td class="num">{len(m.events)}</td></tr>'
        for n, m in enumerate(messages, 1)
    )
    return (
        '<section id="messages">\n<h2>Messages</h2>\n<table class="index"><thead><tr>'
        '<th class="num" scope="col">#</th><th scope="col">Message id</th>'
        '<th scope="col">Direction</th><th scope="col">Peer</th><th scope="col">Case</th>'
        '<th scope="col">Category</th><th scope="col">Handling</th><th scope="col">State</th>'
        '<th class="num" scope="col">Events</th></tr></thead>'
        f"<tbody>{index}</tbody></table>\n"
        + "\n".join(_message(n, m, bad_seq) for n, m in enumerate(messages, 1))
        + "\n</section>"
    )


def _answer_list(answers: list[_Answer], none: str) -> str:
    if not answers:
        return f'<span class="empty">{none}</span>'
    items = "".join(
        f"<li><strong>{_h(a.status)}</strong> by {_bdi(a.who, empty='(no actor recorded)')}"
        f"{' (peer)' if a.by_peer else ''} at {_iso(a.at)}</li>"
        for a in answers
    )
    return f'<ul class="answers">{items}</ul>'


def _message(n: int, m: ReportMessage, bad_seq: int | None) -> str:
    reads, acknowledgements = _answers(m)
    toward = "to" if m.direction == "outbound" else "from"
    digest = f'<code class="wrap">{_h(m.envelope_sha256)}</code>' if m.envelope_sha256 else "—"
    facts = [
        ("Case reference", _bdi(m.case_reference or "")),
        ("Category", _h(m.category or "unknown")),
        ("Handling", _tlp_badge(m.tlp)),
        ("Priority", _h(m.priority or "—")),
        ("State", _h(m.state)),
        ("Envelope SHA-256", digest),
        ("Read by", _answer_list(reads, "no read recorded")),
        ("Acknowledged", _answer_list(acknowledgements, "no acknowledgement recorded")),
    ]
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    return (
        f'<section class="message" id="m{n}">\n'
        f'<h3><span class="count">{n}.</span> <code class="wrap">{_h(m.message_id)}</code> '
        f'<span class="direction">{_h(m.direction)} {toward} {_bdi(m.peer)}</span></h3>\n'
        f'<dl class="meta">{dl}</dl>\n'
        f"{_timeline(m.events, bad_seq, 'No audit event in scope for this message.')}\n"
        "</section>"
    )


def _timeline(events: Iterable[ReportEvent], bad_seq: int | None, none: str) -> str:
    rows = []
    for e in events:
        flags = []
        if e.seq == bad_seq:
            flags.append("bad")
        if e.event in _FLAGGED_EVENTS:
            flags.append("warn")
        css = f' class="{" ".join(flags)}"' if flags else ""
        reason = f"<strong>{_h(e.reason)}</strong> " if e.reason else ""
        rows.append(
            f'<tr{css}><td class="num seq">{e.seq:d}</td><td class="time">{_iso(e.at)}</td>'
            f'<td class="event">{_h(e.event)}</td><td class="free actor">{_bdi(e.actor)}</td>'
            f'<td class="free peer">{_bdi(e.peer)}</td>'
            f'<td class="free detail">{reason}{_h(e.detail)}</td></tr>'
        )
    if not rows:
        return f'<p class="empty">{none}</p>'
    return (
        '<table class="timeline"><thead><tr><th class="num" scope="col">Seq</th>'
        '<th scope="col">Time (UTC)</th><th scope="col">Event</th><th scope="col">Actor</th>'
        '<th scope="col">Peer</th><th scope="col">Reason / detail</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _other_events(events: tuple[ReportEvent, ...], bad_seq: int | None) -> str:
    return (
        '<section id="other-events">\n<h2>Other events</h2>\n'
        '<p class="note">Events of the period that belong to no message of this report: '
        "keys, peers, refused calls.</p>\n"
        f"{_timeline(events, bad_seq, 'No other event in scope.')}\n</section>"
    )


def _footer(data: ReportData) -> str:
    return (
        f"<footer>Generated by Liaison Exchange for {_bdi(data.agency_id)} at "
        f"{_iso(data.generated_at)}. Times are UTC. Text written by peers is shown as "
        "received, with control and direction characters written as escapes such as "
        "\\u202e.</footer>"
    )


_CSS = """
@page { size: A4; margin: 14mm 12mm; }
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #eceef1; color: #1c2330; overflow-wrap: anywhere;
  font: 14px/1.45 "Segoe UI", "DejaVu Sans", "Liberation Sans", Helvetica, Arial, sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 32px 40px; background: #fff; }
header.report { border-bottom: 3px solid #1f3a5f; padding-bottom: 10px; }
.kicker { margin: 0; color: #5a6372; text-transform: uppercase; letter-spacing: .08em;
  font-size: 12px; }
h1 { font-size: 24px; margin: 2px 0 8px; }
h2 { font-size: 17px; margin: 28px 0 10px; padding-bottom: 4px; color: #1f3a5f;
  border-bottom: 1px solid #c9ced6; }
h3 { font-size: 15px; margin: 0 0 8px; }
h3 .count { color: #5a6372; } h3 .direction { font-weight: normal; color: #3b4452; }
.meta { display: grid; grid-template-columns: max-content 1fr; gap: 3px 18px; margin: 0 0 8px; }
.meta dt { color: #5a6372; } .meta dd { margin: 0; overflow-wrap: anywhere; }
.handling { margin: 8px 0 0; }
.banner { margin: 16px 0; padding: 12px 16px; border: 2px solid; border-radius: 4px;
  font-size: 15px; font-weight: 600; }
.banner.ok { background: #e7f4eb; border-color: #2e7d4f; color: #184a2c; }
.banner.bad { background: #fcebea; border-color: #b3261e; color: #7a1712; }
code, .time { font-family: "DejaVu Sans Mono", "Liberation Mono", Consolas, monospace;
  font-size: 12.5px; }
.wrap, .free { overflow-wrap: anywhere; }
.nw, .num, td.time, th { white-space: nowrap; }
td.id { min-width: 13em; }
.note, .empty { color: #5a6372; font-size: 13px; }
table { width: 100%; margin: 6px 0 12px; border-collapse: collapse; font-size: 13px; }
th, td { padding: 4px 8px; text-align: left; vertical-align: top;
  border-bottom: 1px solid #dde1e7; overflow-wrap: break-word; }
thead th { background: #eef1f5; border-bottom: 2px solid #b8c0cc; font-weight: 600; }
tbody tr:nth-child(even) td { background: #f8f9fb; }
table.facts th { width: 14em; font-weight: 600; color: #3b4452; }
tr.warn td { background: #fff6e0; }
tr.bad td { background: #fcebea; font-weight: 600; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
.cards { display: grid; grid-template-columns: repeat(4, 1fr); gap: 10px; }
.card { padding: 8px 12px; border: 1px solid #d5dae1; border-radius: 4px; }
.card .n { font-size: 24px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .l { color: #5a6372; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
figure { margin: 12px 0 20px; }
figcaption { margin-bottom: 4px; font-weight: 600; color: #3b4452; }
table.counts { width: auto; min-width: 40%; }
svg.chart { display: block; max-width: 100%; height: auto; }
svg text { font-family: "DejaVu Sans", "Liberation Sans", Arial, sans-serif; font-size: 11px;
  fill: #3b4452; }
svg .axis-title { font-size: 12px; fill: #1c2330; }
svg .value { font-size: 10px; fill: #1c2330; }
svg .grid { stroke: #e3e6eb; } svg .axis { stroke: #59616e; }
.bar-outbound, .bar-category { fill: #1f3a5f; } .bar-inbound { fill: #8aa4c4; }
section.message { margin: 14px 0; padding: 12px 14px; border: 1px solid #d5dae1;
  border-radius: 4px; }
ul.answers { margin: 0; padding-left: 18px; }
.tlp { display: inline-block; padding: 0 6px; border-radius: 2px; background: #000;
  white-space: nowrap;
  font-family: "DejaVu Sans Mono", Consolas, monospace; font-size: 12px; font-weight: 700; }
.tlp-red { color: #ff2b2b; } .tlp-amber, .tlp-amber-strict { color: #ffc000; }
.tlp-green { color: #33ff00; } .tlp-clear { color: #fff; }
.tlp-unknown { background: none; color: inherit; border: 1px solid #59616e;
  white-space: normal; overflow-wrap: anywhere; }
a { color: #1f3a5f; }
footer { margin-top: 32px; padding-top: 8px; border-top: 1px solid #c9ced6; color: #5a6372;
  font-size: 12px; }
@media print {
  body { background: #fff; }
  main { max-width: none; padding: 0; }
  .banner, .tlp, svg, thead th, tr.bad td, tr.warn td {
    -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  tbody tr:nth-child(even) td { background: none; }
  figure, tr { break-inside: avoid; }
  h2, h3 { break-after: avoid; }
  a { color: inherit; text-decoration: none; }
}
"""
