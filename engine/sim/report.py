"""The ``--report`` page: one self-contained HTML file, charts drawn as inline SVG.

No scripts, no CDN, no fonts to fetch: the page opens the same on an air-gapped
laptop in five years. Each run gets a stacked-area timeline of its instances per state
over engine time, then the comparison table and the faults.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path

from engine.sim.simulate import STATES, Outcome, comparison_rows, duration

WIDTH, HEIGHT = 900, 260
LEFT, BOTTOM, TOP = 60, 30, 10
MAX_POINTS = 800
COLOURS = {
    "current": "#c9d3df",
    "upgrading": "#f2b134",
    "upgraded": "#3c9d5d",
    "failed": "#d64545",
    "rolled back": "#7a5cc9",
}


def write_report(path: Path, outcomes: list[Outcome]) -> None:
    """Write the HTML report for ``outcomes`` (the first is the scenario as written)."""
    path.write_text(render_report(outcomes), encoding="utf-8")


def render_report(outcomes: list[Outcome]) -> str:
    """The whole page as a string."""
    scenario = outcomes[0].scenario
    head = ["measure", *(o.label for o in outcomes)]
    rows = comparison_rows(outcomes)
    table = _table(head, [[name, *values] for name, values in rows])
    charts = "\n".join(_chart_section(o) for o in outcomes)
    faults = "\n".join(_faults_section(o) for o in outcomes)
    notes = "".join(f"<li>{_e(o.label)}: {_e(n)}</li>" for o in outcomes for n in o.notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>osupgrade simulate: {_e(scenario.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 4px 10px; }}
td:not(:first-child) {{ text-align: right; }}
.legend span {{ display: inline-block; margin-right: 1.2em; }}
.legend i {{ display: inline-block; width: 12px; height: 12px; margin-right: 4px; }}
</style></head><body>
<h1>osupgrade simulate: {_e(scenario.name)}</h1>
<p>Seed {scenario.seed}; {outcomes[0].scale_sets} scale sets, {outcomes[0].instances}
instances; image {_e(scenario.image.current_version)} to {_e(scenario.image.new_version)}.
Times are engine (virtual) time from the start of the scenario.</p>
<h2>Side by side</h2>
{table}
{f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""}
<h2>Timelines: instances per state</h2>
<p class="legend">{_legend()}</p>
{charts}
<h2>Faulted upgrades and why</h2>
{faults}
</body></html>
"""


def _e(text: object) -> str:
    return html.escape(str(text))


def _table(head: list[str], rows: list[list[str]]) -> str:
    header = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


def _legend() -> str:
    return "".join(f'<span><i style="background:{COLOURS[s]}"></i>{_e(s)}</span>' for s in STATES)


def _chart_section(outcome: Outcome) -> str:
    title = (
        f"{outcome.label}: {duration(outcome.duration_s)}, peak unhealthy "
        f"{outcome.peak_unhealthy_percent:.1f} % at +{duration(outcome.peak_unhealthy_at)}"
    )
    return f"<h3>{_e(title)}</h3>\n{timeline_svg(outcome)}"


def _faults_section(outcome: Outcome, limit: int = 100) -> str:
    """Each faulted upgrade of a run: scale set, error code and message."""
    rows = [
        [view.scale_set, view.error["code"], view.error["message"]]
        for view in sorted(outcome.view.upgrades.values(), key=lambda v: v.scale_set)
        if view.error is not None
    ]
    if not rows:
        return f"<h3>{_e(outcome.label)}: none</h3>"
    more = f"<p>... and {len(rows) - limit} more</p>" if len(rows) > limit else ""
    table = _table(["scale set", "code", "message"], rows[:limit])
    return f"<h3>{_e(outcome.label)}: {len(rows)}</h3>\n{table}{more}"


def _sampled(points: list[tuple[float, dict[str, int]]]) -> list[tuple[float, dict[str, int]]]:
    """At most ``MAX_POINTS`` points: the state at the end of each time slice."""
    if len(points) <= MAX_POINTS:
        return points
    end = points[-1][0]
    step = end / MAX_POINTS or 1.0
    sampled: dict[int, tuple[float, dict[str, int]]] = {}
    for point in points:
        sampled[int(point[0] // step)] = point
    return list(sampled.values())


def timeline_svg(outcome: Outcome) -> str:
    """A stacked step-area chart of instances per state over engine time."""
    points = _sampled(outcome.timeline)
    total = max(1, outcome.instances)
    end = max((p[0] for p in points), default=1.0) or 1.0
    plot_w, plot_h = WIDTH - LEFT - 10, HEIGHT - BOTTOM - TOP

    def x(seconds: float) -> float:
        return LEFT + plot_w * seconds / end

    def y(count: float) -> float:
        return TOP + plot_h * (1 - count / total)

    layers = []
    below = [0] * len(points)
    for state in reversed(STATES):  # "current" on top, so progress grows from the bottom
        above = [b + p[1].get(state, 0) for b, p in zip(below, points, strict=True)]
        top_line = _steps([(x(p[0]), y(a)) for p, a in zip(points, above, strict=True)])
        bottom_line = _steps([(x(p[0]), y(b)) for p, b in zip(points, below, strict=True)])
        outline = top_line + list(reversed(bottom_line))
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py in outline)
        layers.append(
            f'<polygon points="{path}" fill="{COLOURS[state]}"><title>{_e(state)}</title></polygon>'
        )
        below = above
    axes = _axes(end, total, x, y)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{WIDTH}" '
        f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="instances per state over time">{"".join(layers)}{axes}</svg>'
    )


def _steps(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Turn points into a step line (a state holds until the next change)."""
    out: list[tuple[float, float]] = []
    for index, (px, py) in enumerate(points):
        if index:
            out.append((px, out[-1][1]))
        out.append((px, py))
    return out


def _axes(end: float, total: int, x: Callable[[float], float], y: Callable[[float], float]) -> str:
    parts = [
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{HEIGHT - BOTTOM}" stroke="#444"/>',
        f'<line x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH - 10}" y2="{HEIGHT - BOTTOM}" '
        'stroke="#444"/>',
        f'<text x="{LEFT - 6}" y="{TOP + 10}" text-anchor="end" font-size="11">{total}</text>',
        f'<text x="{LEFT - 6}" y="{HEIGHT - BOTTOM}" text-anchor="end" font-size="11">0</text>',
        f'<text x="12" y="{TOP + (HEIGHT - BOTTOM - TOP) / 2}" font-size="11" '
        f'transform="rotate(-90 12 {TOP + (HEIGHT - BOTTOM - TOP) / 2})" '
        'text-anchor="middle">instances</text>',
    ]
    for tick in range(6):
        seconds = end * tick / 5
        parts.append(
            f'<text x="{x(seconds):.1f}" y="{HEIGHT - 10}" text-anchor="middle" '
            f'font-size="11">{_e(duration(seconds))}</text>'
        )
    return "".join(parts)
