"""Server-side SVG charts: no script and no CDN needed to see a plot.

Why by hand: a line, a band and two axes are a few dozen lines of SVG; a plotting library in the web
process would cost more memory than the pages it draws. Every label goes through markupsafe.
"""

from __future__ import annotations

from datetime import datetime, timezone

from markupsafe import Markup, escape

W, H, PAD_L, PAD_B, PAD_T, PAD_R = 880, 290, 64, 34, 26, 14


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    step = (hi - lo) / n
    mag = 10 ** len(str(int(step))) / 10 if step >= 1 else 1
    step = max(mag, round(step / mag) * mag)
    start = (lo // step) * step
    out, v = [], start
    while v <= hi + 1e-9:
        if v >= lo - 1e-9:
            out.append(v)
        v += step
    return out


def series_chart(xs: list[int], ys: list[float | None], band: list[float] | None = None, *,
                 y_label: str = "Wh", title: str = "") -> Markup:
    """A time series (x = epoch seconds) with an optional +/- band around it; gaps where y is None."""
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
    if not pts:
        return Markup('<p class="muted">nothing released in this range</p>')
    x0, x1 = min(xs), max(xs) or 1
    if x1 == x0:
        x1 = x0 + 1
    bw = band or [0.0] * len(xs)
    lo = min(min(y - b for (_, y), b in zip(pts, bw, strict=False)), 0.0)
    hi = max(y + b for (_, y), b in zip(pts, bw, strict=False)) or 1.0
    iw, ih = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def sx(x: float) -> float:
        return PAD_L + (x - x0) / (x1 - x0) * iw

    def sy(y: float) -> float:
        return PAD_T + ih - (y - lo) / (hi - lo) * ih

    parts = [f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{escape(title)}">']
    for t in _ticks(lo, hi):
        parts.append(f'<line class="grid" x1="{PAD_L}" x2="{W - PAD_R}" y1="{sy(t):.1f}" y2="{sy(t):.1f}"/>'
                     f'<text class="tick" x="{PAD_L - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    if x1 - x0 <= 2 * 86400:  # a day or two: hours; longer: days
        marks, fmt = list(range(x0 - x0 % 10800 + 10800, x1 + 1, 10800)), "%H:%M"
    else:
        days = sorted({x - x % 86400 + 86400 for x in xs})
        marks, fmt = days[::max(1, len(days) // 8)], "%d %b"
    for d in marks:
        if x0 <= d <= x1:
            label = datetime.fromtimestamp(d, timezone.utc).strftime(fmt)
            parts.append(f'<line class="grid v" x1="{sx(d):.1f}" x2="{sx(d):.1f}" y1="{PAD_T}" y2="{PAD_T + ih}"/>'
                         f'<text class="tick" x="{sx(d):.1f}" y="{H - 12}" text-anchor="middle">{label}</text>')
    if band:
        up = " ".join(f"{sx(x):.1f},{sy(y + b):.1f}" for (x, y), b in zip(pts, band, strict=False))
        down = " ".join(f"{sx(x):.1f},{sy(y - b):.1f}" for (x, y), b in reversed(list(zip(pts, band, strict=False))))
        parts.append(f'<polygon class="band" points="{up} {down}"/>')
    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
    parts.append(f'<polyline class="line" points="{line}"/>')
    parts.append(f'<text class="axis" x="{PAD_L}" y="14">{escape(y_label)} (UTC on the time axis)</text></svg>')
    return Markup("".join(parts))
