"""`mdoc opt --report report.html`: one page a person reads to see what the optimizer did.

Per pass: whether it changed the graph, the ops it added or removed, time, node
count, parameter bytes and (with --check-each) output drift; the fusions the
optimized model holds (its mdoc.* ops, e.g. mdoc.layer_norm: 9); how often each rewrite
rule fired (conv-activation: 17, ...); and a picture of
the graph before and after, drawn by graphviz's `dot` when it is installed.
"""

from __future__ import annotations

import html
import os
import shutil
import subprocess

from .atomic import write_text
from .ir import CONSTANT, Graph

MAX_DRAWN_NODES = 400


def graph_dot(graph: Graph) -> str | None:
    """The dataflow of `graph` (constants folded into their users) in DOT, or None when too big to draw."""
    nodes = [n for n in graph if n.op != CONSTANT]
    if len(nodes) > MAX_DRAWN_NODES:
        return None
    ids = {id(n): f"n{i}" for i, n in enumerate(nodes)}
    lines = ["digraph G {", "  rankdir=TB; node [shape=box, style=rounded, fontsize=10];"]
    for i, v in enumerate(graph.inputs):
        lines.append(f'  in{i} [label="{_esc(v.name)}\\n{_esc(str(v.type))}", shape=ellipse];')
    for n in nodes:
        label = n.op.split(".", 1)[1] if n.op.startswith("onnx.") else n.op
        lines.append(f'  {ids[id(n)]} [label="{_esc(label)}"];')
    inputs = {id(v): f"in{i}" for i, v in enumerate(graph.inputs)}
    for n in nodes:
        for v in n.inputs:
            if v is None:
                continue
            src = v.producer()
            if src is not None and id(src) in ids:
                lines.append(f"  {ids[id(src)]} -> {ids[id(n)]};")
            elif id(v) in inputs:
                lines.append(f"  {inputs[id(v)]} -> {ids[id(n)]};")
    for i, v in enumerate(graph.outputs):
        lines.append(f'  out{i} [label="{_esc(v.name)}", shape=ellipse];')
        src = v.producer()
        if src is not None and id(src) in ids:
            lines.append(f"  {ids[id(src)]} -> out{i};")
    lines.append("}")
    return "\n".join(lines)


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def render_svg(dot: str | None) -> str:
    if dot is None:
        return f"<p>(graph has more than {MAX_DRAWN_NODES} nodes: not drawn)</p>"
    exe = shutil.which("dot")
    if exe is None:
        return "<p>(graphviz's <code>dot</code> is not installed: no picture)</p>"
    try:
        result = subprocess.run([exe, "-Tsvg"], input=dot, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "<p>(graphviz took too long: no picture)</p>"
    if result.returncode != 0:
        return f"<p>(graphviz failed: {html.escape(result.stderr.strip()[:200])})</p>"
    svg = result.stdout
    return svg[svg.find("<svg"):]


def write_report(path: str | os.PathLike, title: str, snapshots, records, rules=None) -> None:
    """The HTML page; `rules` maps each rewrite rule that fired to how often (the fusion rules' table)."""
    rows = []
    for rec, change in zip(records, snapshots.changes):
        delta = ", ".join(f"{d:+d} {op}" for op, d in change.items()) or "-"
        drift = "" if rec.drift is None else f"{rec.drift:.3g}"
        rows.append(
            f"<tr><td>{html.escape(rec.name)}</td><td>{'yes' if rec.changed else 'no'}</td>"
            f"<td>{html.escape(delta)}</td><td>{rec.seconds * 1000:.1f}</td>"
            f"<td>{rec.nodes_before} &rarr; {rec.nodes_after}</td>"
            f"<td>{rec.bytes_before:,} &rarr; {rec.bytes_after:,}</td><td>{drift}</td></tr>")
    fused = sorted((op, n) for op, n in snapshots.ops_after.items() if op.startswith("mdoc."))
    fusions = "".join(f"<tr><td>{html.escape(op)}</td><td>{n}</td></tr>" for op, n in fused) \
        or "<tr><td>none</td><td>0</td></tr>"
    fired = "".join(f"<tr><td>{html.escape(rule)}</td><td>{n}</td></tr>" for rule, n in sorted((rules or {}).items())) \
        or "<tr><td>none</td><td>0</td></tr>"
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>mdoc report: {html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}} .pics{{display:flex;gap:2em}}
.pics div{{flex:1;overflow:auto;max-height:90vh}}</style></head><body>
<h1>mdoc opt: {html.escape(title)}</h1>
<table><tr><th>pass</th><th>changed</th><th>ops added/removed</th><th>ms</th><th>nodes</th>
<th>parameter bytes</th><th>max drift</th></tr>
{''.join(rows)}
</table>
<h2>fusions</h2>
<table><tr><th>mdoc op</th><th>count</th></tr>{fusions}</table>
<h2>rewrite rules</h2>
<table><tr><th>rule</th><th>applications</th></tr>{fired}</table>
<div class="pics"><div><h2>before</h2>{render_svg(snapshots.dot_before)}</div>
<div><h2>after</h2>{render_svg(snapshots.dot_after)}</div></div>
</body></html>
"""
    write_text(path, page)
