#!/usr/bin/env python3
"""Turn bench samples into the markdown tables and an SVG chart (stdlib only).

Usage: report.py SAMPLES.tsv CASES.tsv OUT.md OUT.svg [HEADER.md]

SAMPLES.tsv: one measurement a line, tab-separated:
    case  row  contender  value
CASES.tsv: one case a line, tab-separated, in the order they are printed:
    case  title  unit  contender-A  contender-B  ratio-label  note
(contender-B, ratio-label and note may be "-"). The ratio is median(B) /
median(A) for every row measured by both. Cases are printed in the order of
their titles ("1. ..."), rows in their first-seen order.
"""
import statistics
import re
import sys
from collections import OrderedDict
from html import escape


def load(samples_path, cases_path):
    cases = OrderedDict()
    with open(cases_path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            p = (line.rstrip("\n").split("\t") + ["-"] * 7)[:7]
            cid, title, unit, a, b, ratio, note = p
            cases[cid] = dict(title=title, unit=unit, a=a, b=None if b == "-" else b,
                              ratio=None if ratio == "-" else ratio,
                              note=None if note == "-" else note,
                              rows=OrderedDict())
    with open(samples_path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            p = line.rstrip("\n").split("\t")
            if len(p) != 4:
                sys.exit(f"{samples_path}:{n}: expected 4 tab-separated fields, got {len(p)}")
            cid, row, who, value = p
            if cid not in cases:
                sys.exit(f"{samples_path}:{n}: unknown case {cid!r} (not in {cases_path})")
            cases[cid]["rows"].setdefault(row, {}).setdefault(who, []).append(float(value))
    # printed in the order of their titles ("1. ...", "2. ...")
    def key(item):
        t = item[1]["title"]
        n = re.match(r"\d+", t)
        return (int(n.group()) if n else 99, t)
    return OrderedDict(sorted(cases.items(), key=key))


def fmt(v):
    if v is None:
        return ""
    a = abs(v)
    if a >= 1000:
        return f"{v:.0f}"
    if a >= 100:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def stats(vals):
    if not vals:
        return None
    return statistics.median(vals), min(vals), max(vals), len(vals)


def markdown(cases):
    out = []
    for cid, c in cases.items():
        if not c["rows"]:
            continue
        out.append(f"### {c['title']}\n")
        a, b = c["a"], c["b"]
        head = f"| {c['unit']} | {a} median | min | max |"
        sep = "|---|---:|---:|---:|"
        if b:
            head += f" {b} median | min | max | {c['ratio'] or b + ' / ' + a} |"
            sep += "---:|---:|---:|---:|"
        head += " n |"
        sep += "---:|"
        out += [head, sep]
        for row, by in c["rows"].items():
            sa = stats(by.get(a, []))
            cells = [row] + (list(map(fmt, sa[:3])) if sa else ["", "", ""])
            ns = [str(sa[3]) if sa else "0"]
            if b:
                sb = stats(by.get(b, []))
                cells += list(map(fmt, sb[:3])) if sb else ["", "", ""]
                cells.append(f"{sb[0] / sa[0]:.2f}x" if sa and sb and sa[0] else "")
                ns.append(str(sb[3]) if sb else "0")
            cells.append("/".join(ns))
            out.append("| " + " | ".join(cells) + " |")
        if c["note"]:
            out.append("")
            out.append(c["note"])
        out.append("")
    return "\n".join(out)


def svg(cases):
    """One panel per case, a group of bars per row: each contender's median
    with a min-max whisker, scaled per row (rows of one case can differ by
    orders of magnitude), the value written beside it."""
    W, left, right, bar, gap = 960, 300, 80, 12, 6
    colors = ["#1f77b4", "#ff7f0e"]
    parts, y = [], 10
    parts.append(f'<text x="10" y="{y + 12}" font-size="11" fill="#555">Medians with min-max whiskers; '
                 'bars are scaled per row (compare within a row), values in the unit of the case.</text>')
    y += 24
    for cid, c in cases.items():
        if not c["rows"]:
            continue
        whos = [c["a"]] + ([c["b"]] if c["b"] else [])
        unit = f" ({c['unit']})" if c["unit"] else ""
        parts.append(f'<text x="10" y="{y + 14}" font-weight="bold">{escape(c["title"] + unit)}</text>')
        y += 20
        for i, w in enumerate(whos):
            parts.append(f'<rect x="{left}" y="{y + 2}" width="10" height="10" fill="{colors[i]}"/>'
                         f'<text x="{left + 14}" y="{y + 11}" font-size="11">{escape(w)}</text>')
            y += 15
        y += 6
        width = W - left - right
        for row, by in c["rows"].items():
            top = max((max(v) for v in by.values() if v), default=0) or 1
            scale = width / top
            parts.append(f'<text x="{left - 6}" y="{y + bar + 2}" text-anchor="end" font-size="11">{escape(row)}</text>')
            for i, w in enumerate(whos):
                s = stats(by.get(w, []))
                yy = y + i * (bar + 1)
                if s:
                    med, lo, hi = s[:3]
                    parts.append(f'<rect x="{left}" y="{yy}" width="{max(med * scale, 1):.1f}" height="{bar}" fill="{colors[i]}"/>')
                    if hi > lo:
                        cy = yy + bar / 2
                        parts.append(f'<line x1="{left + lo * scale:.1f}" x2="{left + hi * scale:.1f}" y1="{cy}" y2="{cy}" stroke="#000"/>'
                                     f'<line x1="{left + hi * scale:.1f}" x2="{left + hi * scale:.1f}" y1="{yy + 2}" y2="{yy + bar - 2}" stroke="#000"/>')
                    parts.append(f'<text x="{left + max(hi, med) * scale + 4:.1f}" y="{yy + bar - 2}" font-size="10">{fmt(med)}</text>')
            y += len(whos) * (bar + 1) + gap
        y += 16
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{y}" font-family="sans-serif" font-size="12">'
            f'<rect width="100%" height="100%" fill="#fff"/>' + "".join(parts) + "</svg>\n")


def main():
    if len(sys.argv) not in (5, 6):
        sys.exit(__doc__)
    samples, cases_path, md_path, svg_path = sys.argv[1:5]
    cases = load(samples, cases_path)
    header = open(sys.argv[5], encoding="utf-8").read() if len(sys.argv) == 6 else ""
    body = markdown(cases)
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(header + body)
    with open(svg_path, "w", encoding="utf-8") as f:
        f.write(svg(cases))
    print(body)


if __name__ == "__main__":
    main()
