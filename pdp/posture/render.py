"""Posture as a terminal summary and as one self-contained HTML page.

The page loads nothing: styles are inline, charts are inline SVG drawn here, and a
Content-Security-Policy forbids every fetch and every script, so it can be mailed or
archived and opened offline. Every name on it (agents, tools, policies, purposes come
from the log, i.e. from callers) is HTML-escaped.
"""

from __future__ import annotations

from datetime import datetime
from html import escape

from pdp.engine.access import ALLOW, DEPENDS, NEVER
from pdp.model import format_time
from pdp.posture.report import Posture


def _plain(text: str) -> str:
    """Names come from the log (from callers): control characters are shown escaped,
    never sent to the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def _when(value: datetime | None) -> str:
    return format_time(value) if value is not None else "-"


def text_summary(posture: Posture) -> str:
    lines = [
        f"pdp posture: {posture.decisions} decisions ({posture.allowed} allowed,"
        f" {posture.denied} denied) from {_when(posture.start)} to {_when(posture.end)};"
        f" {posture.refusals} refused calls; policy version {posture.policy_version}",
    ]
    if posture.unreadable:
        lines.append(f"  ({posture.unreadable} unreadable lines skipped)")
    new = posture.new_pairs()
    for agent in posture.agents.values():
        lines.append("")
        note = "" if agent.in_inventory else "  (not in the inventory)"
        lines.append(
            f"{_plain(agent.agent)}{note}: uses {len(agent.used)} tool(s), permitted"
            f" {len(agent.permitted)}, {sum(agent.denied.values())} denied call(s)"
        )
        if agent.unused_permitted:
            lines.append(f"  permitted, never used: {_plain(', '.join(agent.unused_permitted))}")
        for tool, purposes in agent.narrow_intents().items():
            lines.append(f"  used only under intents {_plain(', '.join(purposes))}: {_plain(tool)}")
        if agent.denied_by_reason:
            counts = ", ".join(f"{why} {n}" for why, n in agent.denied_by_reason.most_common())
            lines.append(f"  denied: {counts}")
        if agent.agent in new:
            lines.append(f"  new in the last day: {_plain(', '.join(new[agent.agent]))}")
    lines.append("")
    unused = posture.unused_permits
    lines.append(
        "permits that never determined a decision: "
        + (", ".join(f"{p} ({posture.permits[p]})" for p in unused) if unused else "none")
    )
    fired = posture.forbid_hits.most_common()
    lines.append(
        "forbids that fired: " + (", ".join(f"{p} x{n}" for p, n in fired) if fired else "none")
    )
    return "\n".join(lines)


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d2430;background:#fafbfc}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px}
.meta{color:#5b6473}.cards{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0}
.card{background:#fff;border:1px solid #dde2ea;border-radius:6px;padding:10px 14px;min-width:120px}
.card b{display:block;font-size:22px}
table{border-collapse:collapse;background:#fff}
th,td{border:1px solid #dde2ea;padding:4px 6px;text-align:center;font-size:12px}
th.agent{text-align:left;white-space:nowrap}
thead th{writing-mode:vertical-rl;transform:rotate(180deg);white-space:nowrap;padding:6px 2px}
td.allow{background:#d9f2e0}td.depends{background:#fff2cc}td.never{background:#f1f3f6;color:#98a1b0}
td.unknown{background:#fff}
td .u{font-weight:600;color:#16703a}td .d{font-weight:600;color:#b42318}
td.overperm{outline:2px dashed #d08700;outline-offset:-3px}
.legend span{display:inline-block;padding:2px 8px;margin-right:6px;border:1px solid #dde2ea}
ul{margin:4px 0 8px 18px;padding:0}li{margin:2px 0}
.agentbox{background:#fff;border:1px solid #dde2ea;border-radius:6px;padding:8px 12px;margin:8px 0}
code{background:#eef1f5;padding:0 3px;border-radius:3px}
"""


def _cell(posture: Posture, agent: str, tool: str) -> str:
    record = posture.agents[agent]
    access = record.access.get(tool, "unknown")
    used, denied = record.used.get(tool, 0), record.denied.get(tool, 0)
    classes = [access if access in (ALLOW, DEPENDS, NEVER) else "unknown"]
    if access in (ALLOW, DEPENDS) and not used:
        classes.append("overperm")
    title = f"{agent} {tool}: {access}; used {used}, denied {denied}"
    body = ""
    if used:
        body += f'<span class="u">{used}</span>'
    if denied:
        body += f'{"/" if used else ""}<span class="d">{denied}</span>'
    return (
        f'<td class="{" ".join(classes)}" data-access="{escape(access)}" data-used="{used}"'
        f' data-denied="{denied}" title="{escape(title)}">{body or "&#183;"}</td>'
    )


def _matrix(posture: Posture) -> str:
    head = "".join(f"<th>{escape(tool)}</th>" for tool in posture.tools)
    rows = []
    for agent in posture.agents:
        cells = "".join(_cell(posture, agent, tool) for tool in posture.tools)
        rows.append(
            f'<tr data-agent="{escape(agent)}"><th class="agent">{escape(agent)}</th>{cells}</tr>'
        )
    return (
        f'<table id="matrix"><thead><tr><th class="agent">agent \\ tool</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _timeline_svg(posture: Posture) -> str:
    points = posture.timeline
    if not points:
        return "<p>No decisions in the window.</p>"
    width, height, pad = 900, 220, 30
    peak = max(a + d for _, a, d in points) or 1
    bar = (width - 2 * pad) / len(points)
    bars = []
    for i, (start, allowed, denied) in enumerate(points):
        x = pad + i * bar
        h_allow = (height - 2 * pad) * allowed / peak
        h_deny = (height - 2 * pad) * denied / peak
        base = height - pad
        label = escape(f"{format_time(start)}: {allowed} allowed, {denied} denied")
        bars.append(
            f"<g><title>{label}</title>"
            f'<rect x="{x:.1f}" y="{base - h_allow:.1f}" width="{max(bar - 1, 1):.1f}"'
            f' height="{h_allow:.1f}" fill="#3fa36b"/>'
            f'<rect x="{x:.1f}" y="{base - h_allow - h_deny:.1f}" width="{max(bar - 1, 1):.1f}"'
            f' height="{h_deny:.1f}" fill="#d64545"/></g>'
        )
    first, last = escape(format_time(points[0][0])), escape(format_time(points[-1][0]))
    return (
        f'<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
        f' role="img" aria-label="decisions over time">'
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}"'
        f' stroke="#8a94a6"/>'
        f'<text x="{pad}" y="{height - 8}" font-size="11">{first}</text>'
        f'<text x="{width - pad}" y="{height - 8}" font-size="11" text-anchor="end">{last}</text>'
        f'<text x="{pad}" y="16" font-size="11">peak {peak} per bucket;'
        f" green allowed, red denied</text>{''.join(bars)}</svg>"
    )


def _reasons_svg(posture: Posture) -> str:
    totals: dict[str, int] = {}
    for agent in posture.agents.values():
        for why, n in agent.denied_by_reason.items():
            totals[why] = totals.get(why, 0) + n
    if not totals:
        return "<p>No denied calls.</p>"
    items = sorted(totals.items(), key=lambda kv: -kv[1])
    peak = items[0][1]
    row, width = 24, 600
    bars = []
    for i, (why, n) in enumerate(items):
        y = i * row + 4
        w = (width - 220) * n / peak
        bars.append(
            f'<text x="0" y="{y + 14}" font-size="12">{escape(why)}</text>'
            f'<rect x="160" y="{y}" width="{w:.1f}" height="{row - 8}" fill="#d64545"/>'
            f'<text x="{166 + w:.1f}" y="{y + 14}" font-size="12">{n}</text>'
        )
    return (
        f'<svg id="denials" xmlns="http://www.w3.org/2000/svg" width="{width}"'
        f' height="{len(items) * row + 8}" role="img" aria-label="denied calls by reason">'
        f"{''.join(bars)}</svg>"
    )


def _findings(posture: Posture) -> str:
    new = posture.new_pairs()
    boxes = []
    for agent in posture.agents.values():
        items = []
        if agent.unused_permitted:
            items.append(
                "permitted, never used: "
                + ", ".join(f"<code>{escape(t)}</code>" for t in agent.unused_permitted)
            )
        for tool, purposes in agent.narrow_intents().items():
            items.append(
                f"<code>{escape(tool)}</code> used only under intents "
                + ", ".join(f"<code>{escape(p)}</code>" for p in purposes)
            )
        if agent.denied_by_reason:
            items.append(
                "denied: "
                + ", ".join(f"{escape(w)} {n}" for w, n in agent.denied_by_reason.most_common())
            )
        if agent.agent in new:
            items.append(
                "new in the last day: "
                + ", ".join(f"<code>{escape(t)}</code>" for t in new[agent.agent])
            )
        if not agent.in_inventory:
            items.append("not in the inventory")
        body = "".join(f"<li>{i}</li>" for i in items) or "<li>nothing to report</li>"
        boxes.append(f'<div class="agentbox"><b>{escape(agent.agent)}</b><ul>{body}</ul></div>')
    return "".join(boxes)


def html_page(posture: Posture) -> str:
    unused = posture.unused_permits
    fired = posture.forbid_hits.most_common()
    permits = (
        "".join(f"<li><code>{escape(p)}</code> ({escape(posture.permits[p])})</li>" for p in unused)
        or "<li>none</li>"
    )
    forbids = (
        "".join(f"<li><code>{escape(p)}</code> x{n}</li>" for p, n in fired) or "<li>none</li>"
    )
    cards = "".join(
        f'<div class="card"><b>{value}</b>{escape(label)}</div>'
        for label, value in (
            ("decisions", posture.decisions),
            ("allowed", posture.allowed),
            ("denied", posture.denied),
            ("refused calls", posture.refusals),
            ("agents", len(posture.agents)),
            ("permits never determining", len(unused)),
        )
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pdp posture</title><style>{_STYLE}</style></head>
<body>
<h1>pdp posture</h1>
<div class="meta">window {escape(_when(posture.start))} to {escape(_when(posture.end))};
policy version <code>{escape(posture.policy_version)}</code></div>
<div class="cards">{cards}</div>
<h2>Agents &times; tools</h2>
<p class="legend"><span style="background:#d9f2e0">allowed</span><span
style="background:#fff2cc">depends on the call</span><span
style="background:#f1f3f6">never</span><span
style="outline:2px dashed #d08700">permitted, unused</span> cell: <b
style="color:#16703a">used</b>/<b style="color:#b42318">denied</b> calls</p>
{_matrix(posture)}
<h2>Decisions over time</h2>
{_timeline_svg(posture)}
<h2>Denied calls by reason</h2>
{_reasons_svg(posture)}
<h2>Findings per agent</h2>
{_findings(posture)}
<h2>Permits that never determined a decision</h2><ul>{permits}</ul>
<h2>Forbids that fired</h2><ul>{forbids}</ul>
</body></html>
"""
