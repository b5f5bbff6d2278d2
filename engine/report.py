"""The run report: one self-contained HTML file a person opens (``--report PATH.html``).

Pure: :func:`render_html` turns a :class:`RunRecord` into text. The charts are inline SVG
drawn here, so the file needs nothing from the network, no JavaScript library and no fonts;
the little script at the end only adds hover read-outs. Every chart carries its figures as
``data-*`` attributes, and the whole timeline is embedded as JSON (``#run-data``), so a
reader (or a test) can check the picture against the numbers.

(Over 400 lines because the page's HTML, CSS, SVG charts and script are one artifact, read
together.)
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from engine.errors import storage_error
from engine.stats import Summary
from engine.timeline import Point

__all__ = ["RunRecord", "jsonable", "render_html", "write_report"]

#: Chart drawing area, in SVG user units (the SVG scales to the page's width).
WIDTH, HEIGHT = 860, 200
MARGIN_LEFT, MARGIN_BOTTOM, MARGIN_TOP = 64, 28, 12
COLORS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c")


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """Everything the report and the MLflow record show about one run."""

    summary: Summary
    #: how the run was set up: input, output, endpoint, model version, flags
    settings: Mapping[str, Any]
    points: Sequence[Point] = ()
    #: ``[{"message", "rows", "examples"}]``, most frequent first
    rejects: Sequence[Mapping[str, Any]] = ()
    #: "finished", "stopped" or "failed"
    status: str = "finished"
    #: wall-clock start, ISO 8601
    started_at: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def data(self) -> dict[str, Any]:
        """The record as one JSON-able document (embedded in the report)."""
        return {
            "status": self.status,
            "started_at": self.started_at,
            "summary": self.summary.to_dict(),
            "settings": dict(self.settings),
            "timeline": [point.to_dict() for point in self.points],
            "rejected": [dict(group) for group in self.rejects],
        }


def write_report(record: RunRecord, path: str | Path) -> Path:
    """Write the report atomically (a temporary file renamed into place)."""
    target = Path(path)
    partial = target.with_name(f".{target.name}.partial")
    try:
        partial.write_text(render_html(record), encoding="utf-8")
        partial.replace(target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise storage_error("write the report", str(target), exc) from exc
    return target


def render_html(record: RunRecord) -> str:
    summary = record.summary
    title = f"Scoring run: {summary.endpoint}"
    sections = [
        _banner(record),
        _summary_section(summary),
        _charts(record),
        _retries_section(summary.retries),
        _rejects_section(record.rejects, summary.rows_rejected),
        _settings_section(record.settings),
    ]
    # "<" as its JSON escape: no text in the data can close the script element early.
    data = orjson.dumps(record.data(), default=jsonable).decode().replace("<", "\\u003c")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_e(title)}</title><meta name=\"viewport\" content=\"width=device-width\">"
        f"<style>{_CSS}</style></head><body data-status=\"{_e(record.status)}\">"
        f"<h1>{_e(title)}</h1>"
        + "".join(sections)
        + f"<script type=\"application/json\" id=\"run-data\">{data}</script>"
        + f"<script>{_JS}</script></body></html>\n"
    )


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _banner(record: RunRecord) -> str:
    summary = record.summary
    started = f" · started {_e(record.started_at)}" if record.started_at else ""
    if record.status == "failed":
        text = f"The run FAILED (exit code {summary.exit_code}): {summary.error or 'unknown error'}"
        kind = "bad"
    elif record.status == "stopped":
        text = f"The run was STOPPED before it finished: {summary.error or 'stopped'}"
        kind = "warn"
    elif summary.rows_rejected:
        text = (
            f"The run finished; the endpoint rejected {summary.rows_rejected:,} row(s) "
            f"(exit code {summary.exit_code}): see “Rejected rows”"
        )
        kind = "warn"
    else:
        text = "The run finished: every row was scored"
        kind = "ok"
    return (
        f"<p class=\"banner {kind}\" id=\"status\" data-status=\"{_e(record.status)}\" "
        f"data-exit-code=\"{summary.exit_code}\">{_e(text)}</p>"
        f"<p class=\"sub\">{summary.elapsed_s:,.1f} s{started}</p>"
    )


def _summary_section(summary: Summary) -> str:
    lat = summary.latency_ms
    facts = [
        ("rows_scored", "Rows scored", f"{summary.rows_scored:,}", summary.rows_scored),
        ("rows_rejected", "Rows rejected", f"{summary.rows_rejected:,}", summary.rows_rejected),
        ("rows_per_s", "Rows/s", f"{summary.rows_per_s:,.1f}", summary.rows_per_s),
        ("requests", "Requests", f"{summary.requests:,}", summary.requests),
        (
            "throttled_429",
            "Throttled (429)",
            f"{summary.throttled_429:,} ({summary.throttled_share:.1%})",
            summary.throttled_429,
        ),
        ("p50", "Latency p50", f"{lat.get('p50', 0):,.0f} ms", lat.get("p50", 0)),
        ("p99", "Latency p99", f"{lat.get('p99', 0):,.0f} ms", lat.get("p99", 0)),
    ]
    tiles = "".join(
        f"<div class=\"tile\" data-field=\"{key}\" data-value=\"{value}\">"
        f"<div class=\"v\">{_e(text)}</div><div class=\"k\">{_e(label)}</div></div>"
        for key, label, text, value in facts
    )
    lines = "\n".join(summary.lines())
    return (
        f"<section id=\"summary\"><h2>Summary</h2><div class=\"tiles\">{tiles}</div>"
        f"<pre>{_e(lines)}</pre></section>"
    )


def _rate(points: Sequence[Point], counter: Callable[[Point], float]) -> list[float | None]:
    """Per-second rate of a cumulative counter between consecutive points."""
    rates: list[float | None] = []
    previous_t, previous = 0.0, 0.0
    for point in points:
        span = point.t_s - previous_t
        value = counter(point)
        rates.append((value - previous) / span if span > 0 else None)
        previous_t, previous = point.t_s, value
    return rates


def _charts(record: RunRecord) -> str:
    points = list(record.points)
    summary = record.summary
    if not points:
        return "<section id=\"charts\"><h2>Over time</h2><p>No samples: the run ended before " \
            "its first second.</p></section>"
    xs = [p.t_s for p in points]
    last = points[-1]
    charts = [
        _line_chart(
            "rows", "Rows per second", "rows/s", xs,
            [("rows/s", _rate(points, lambda p: p.rows_done))],
            {"total-rows": last.rows_done, "total-rejected": last.rows_rejected},
        ),
        _line_chart(
            "in-flight", "Requests in flight", "requests", xs,
            [
                ("in flight", [float(p.in_flight) for p in points]),
                ("in-flight limit", [p.in_flight_limit for p in points]),
            ],
            {"max-in-flight": max(p.in_flight for p in points)},
        ),
        _line_chart(
            "pacing", "Pacing rate and 429s", "per second", xs,
            [
                ("pacing rate (req/s)", [p.pacing_rps for p in points]),
                ("requests/s", _rate(points, lambda p: p.requests)),
                ("429s/s", _rate(points, lambda p: p.throttled_429)),
            ],
            {"total-429": last.throttled_429, "total-requests": last.requests,
             "summary-429": summary.throttled_429},
        ),
        _line_chart(
            "latency", "Latency percentiles", "ms", xs,
            [
                ("p50", [p.p50_ms for p in points]),
                ("p95", [p.p95_ms for p in points]),
                ("p99", [p.p99_ms for p in points]),
            ],
            {"p99-max": round(max((p.p99_ms or 0.0) for p in points), 1)},
        ),
    ]
    widest = max(point.span_s for point in points)
    step = f"one point per {widest:.0f} s" if len(points) > 1 else "one point"
    return (
        f"<section id=\"charts\"><h2>Over time</h2><p class=\"sub\">{len(points)} points "
        f"({_e(step)}; long runs are merged into fewer, wider points)</p>"
        + "".join(charts)
        + "</section>"
    )


def _nice_max(value: float) -> float:
    if value <= 0 or not math.isfinite(value):
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for factor in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= factor * magnitude:
            return float(factor * magnitude)
    return float(10 * magnitude)


def _fmt(value: float) -> str:
    if value >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:,.2g}" if value < 1 else f"{value:,.1f}"


def _line_chart(
    chart_id: str,
    title: str,
    unit: str,
    xs: Sequence[float],
    series: Sequence[tuple[str, Sequence[float | None]]],
    data: Mapping[str, object],
) -> str:
    values = [v for _, ys in series for v in ys if v is not None]
    y_max = _nice_max(max(values, default=0.0))
    x_max = max(xs[-1], 1.0)
    plot_w, plot_h = WIDTH - MARGIN_LEFT - 10, HEIGHT - MARGIN_BOTTOM - MARGIN_TOP

    def x(t: float) -> float:
        return MARGIN_LEFT + t / x_max * plot_w

    def y(v: float) -> float:
        return MARGIN_TOP + plot_h - v / y_max * plot_h

    grid = []
    for i in range(5):
        value = y_max * i / 4
        gy = y(value)
        grid.append(
            f"<line class=\"grid\" x1=\"{MARGIN_LEFT}\" x2=\"{WIDTH - 10}\" y1=\"{gy:.1f}\" "
            f"y2=\"{gy:.1f}\"/><text class=\"axis\" x=\"{MARGIN_LEFT - 6}\" y=\"{gy + 4:.1f}\" "
            f"text-anchor=\"end\">{_fmt(value)}</text>"
        )
    for i in range(5):
        t = x_max * i / 4
        anchor = "end" if i == 4 else "middle"
        grid.append(
            f"<text class=\"axis\" x=\"{x(t):.1f}\" y=\"{HEIGHT - 8}\" "
            f"text-anchor=\"{anchor}\">{_fmt(t)} s</text>"
        )
    lines = []
    legend = []
    for index, (name, ys) in enumerate(series):
        color = COLORS[index % len(COLORS)]
        pairs = [(x(t), y(v)) for t, v in zip(xs, ys, strict=True) if v is not None]
        if pairs:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in pairs)
            lines.append(
                f"<polyline class=\"series\" data-series=\"{_e(name)}\" fill=\"none\" "
                f"stroke=\"{color}\" stroke-width=\"2\" points=\"{path}\"/>"
            )
        last = next((v for v in reversed(ys) if v is not None), None)
        shown = "–" if last is None else _fmt(last)
        legend.append(
            f"<span class=\"key\" data-series=\"{_e(name)}\" data-last=\"{last}\">"
            f"<i style=\"background:{color}\"></i>{_e(name)} <b>{shown}</b></span>"
        )
    attributes = "".join(f" data-{key}=\"{_e(value)}\"" for key, value in data.items())
    plotted = {"x": list(xs), "series": {name: list(ys) for name, ys in series}}
    values_json = _e(orjson.dumps(plotted).decode())
    return (
        f"<figure class=\"chart\" id=\"chart-{chart_id}\"{attributes} "
        f"data-values=\"{values_json}\">"
        f"<figcaption>{_e(title)} <span class=\"unit\">({_e(unit)}; last value in bold)</span>"
        f"</figcaption><div class=\"legend\">{''.join(legend)}</div>"
        f"<svg viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{_e(title)}\">"
        f"{''.join(grid)}{''.join(lines)}<line class=\"cursor\" x1=\"-1\" x2=\"-1\" "
        f"y1=\"{MARGIN_TOP}\" y2=\"{HEIGHT - MARGIN_BOTTOM}\"/></svg>"
        f"<div class=\"readout\"></div></figure>"
    )


def _retries_section(retries: Mapping[str, int]) -> str:
    if not retries:
        return "<section id=\"retries\"><h2>Retries by cause</h2><p>No retries.</p></section>"
    top = max(retries.values())
    rows = "".join(
        f"<tr data-cause=\"{_e(cause)}\" data-count=\"{count}\"><td>{_e(cause)}</td>"
        f"<td class=\"n\">{count:,}</td><td class=\"barcell\"><span class=\"bar\" "
        f"style=\"width:{max(1.0, 100.0 * count / top):.1f}%\"></span></td></tr>"
        for cause, count in sorted(retries.items(), key=lambda item: (-item[1], item[0]))
    )
    return (
        "<section id=\"retries\"><h2>Retries by cause</h2><table><thead><tr><th>cause</th>"
        f"<th class=\"n\">retries</th><th></th></tr></thead><tbody>{rows}</tbody></table></section>"
    )


def _rejects_section(groups: Sequence[Mapping[str, Any]], rows_rejected: int) -> str:
    head = "<section id=\"rejected\"><h2>Rejected rows</h2>"
    if not groups:
        text = "No row was rejected." if not rows_rejected else (
            f"{rows_rejected:,} rows were rejected (their messages are in the output's error "
            "column; rows reused from a checkpoint are not grouped here)."
        )
        return f"{head}<p>{_e(text)}</p></section>"
    rows = "".join(
        f"<tr class=\"reject\" data-rows=\"{group['rows']}\"><td class=\"msg\">"
        f"{_e(group['message'])}</td><td class=\"n\">{group['rows']:,}</td>"
        f"<td>{_e(', '.join(str(row) for row in group['examples']))}</td></tr>"
        for group in groups
    )
    return (
        f"{head}<p class=\"sub\">Grouped by the endpoint's message; example rows are input "
        "row numbers (0-based, in the order read).</p><table><thead><tr><th>message</th>"
        f"<th class=\"n\">rows</th><th>example rows</th></tr></thead><tbody>{rows}</tbody>"
        "</table></section>"
    )


def _settings_section(settings: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr data-setting=\"{_e(name)}\"><th>{_e(name)}</th><td>{_e(_show(value))}</td></tr>"
        for name, value in settings.items()
        if value is not None
    )
    return f"<section id=\"settings\"><h2>Settings</h2><table>{rows}</table></section>"


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value, default=jsonable).decode()


def jsonable(value: Any) -> Any:
    """orjson's fallback: sets as sorted lists, anything else as its text."""
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;
max-width:960px;padding:0 16px;color:#111827;background:#fff}
h1{font-size:22px;margin:0 0 8px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid
#e5e7eb;padding-bottom:4px}.sub{color:#6b7280;margin:4px 0}
.banner{padding:10px 14px;border-radius:6px;font-weight:600;margin:8px 0}
.ok{background:#dcfce7;color:#14532d}.warn{background:#fef3c7;color:#78350f}
.bad{background:#fee2e2;color:#7f1d1d}
.tiles{display:flex;flex-wrap:wrap;gap:8px}.tile{border:1px solid #e5e7eb;border-radius:6px;
padding:8px 12px;min-width:96px;flex:1}.tile .v{font-size:18px;font-weight:600}
.tile .k{color:#6b7280;font-size:12px}
pre{background:#f9fafb;border:1px solid #e5e7eb;padding:8px;white-space:pre-wrap;font-size:12px}
.chart{margin:14px 0 22px}.chart figcaption{font-weight:600}.unit{font-weight:400;color:#6b7280}
.chart svg{width:100%;height:auto;display:block}.legend{font-size:12px;margin:2px 0}
.key{margin-right:14px;white-space:nowrap}.key i{display:inline-block;width:10px;height:10px;
margin-right:4px;border-radius:2px}.grid{stroke:#e5e7eb}.axis{font-size:11px;fill:#6b7280}
.cursor{stroke:#9ca3af;stroke-dasharray:3 3}.readout{font-size:12px;color:#374151;min-height:16px}
table{border-collapse:collapse;width:100%;font-size:13px}td,th{text-align:left;padding:4px 8px;
border-bottom:1px solid #f3f4f6;vertical-align:top}.n{text-align:right;
font-variant-numeric:tabular-nums}.msg{font-family:ui-monospace,monospace;font-size:12px;
word-break:break-word}.barcell{width:45%}.bar{display:inline-block;height:10px;
background:#f59e0b;border-radius:2px}#settings th{width:28%;color:#374151;font-weight:500}
"""

# Hover read-outs only: the page is complete without it. It also marks each chart with the
# width the browser drew it at (``data-drawn-width``), which a headless test can check.
_JS = """
document.querySelectorAll('figure.chart').forEach(function(fig){
  var svg=fig.querySelector('svg'), data=JSON.parse(fig.dataset.values);
  var cursor=fig.querySelector('.cursor'), out=fig.querySelector('.readout');
  var drawn=0; fig.querySelectorAll('polyline').forEach(function(p){
    drawn=Math.max(drawn,p.getBBox().width);});
  fig.dataset.drawnWidth=Math.round(drawn);
  svg.addEventListener('mousemove',function(ev){
    var box=svg.getBoundingClientRect(), vx=(ev.clientX-box.left)/box.width*__W__;
    var xmax=Math.max(data.x[data.x.length-1],1), t=(vx-__L__)/(__W__-__L__-10)*xmax, best=0;
    data.x.forEach(function(x,i){if(Math.abs(x-t)<Math.abs(data.x[best]-t))best=i;});
    var px=__L__+data.x[best]/xmax*(__W__-__L__-10);
    cursor.setAttribute('x1',px);cursor.setAttribute('x2',px);
    var parts=['t='+data.x[best].toFixed(0)+' s'];
    for(var name in data.series){var v=data.series[name][best];
      parts.push(name+' '+(v===null?'–':(+v).toFixed(1)));}
    out.textContent=parts.join(' · ');
  });
});
document.body.dataset.rendered='1';
""".replace("__W__", str(WIDTH)).replace("__L__", str(MARGIN_LEFT))
