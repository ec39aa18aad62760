"""Render report sections as one self-contained HTML page (figures embedded as base64 PNG, no external files)."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping, Sequence

from etils import epath

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
h3 { font-size: 1.02em; margin-bottom: .3em; }
table { border-collapse: collapse; margin: .4em 0 1.2em; font-size: .86em; }
th, td { border: 1px solid #ddd; padding: .28em .6em; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f5f7; } tr:nth-child(even) td { background: #fafbfc; }
img { max-width: 100%; border: 1px solid #eee; margin: .5em 0 1em; }
li { margin: .15em 0; } .na { color: #999; }
"""


def _inline(text: str) -> str:
    """Escape text, then turn markdown **bold** into <b>."""
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text))


def _cell(text: str, tag: str) -> str:
    klass = ' class="na"' if text == "n/a" else ""
    return f"<{tag}{klass}>{_inline(text)}</{tag}>"


def _table(table) -> str:
    head = "".join(_cell(c, "th") for c in table.header)
    body = "".join("<tr>" + "".join(_cell(c, "td") for c in row) + "</tr>" for row in table.rows)
    title = f"<h3>{_inline(table.title)}</h3>" if table.title else ""
    return f"{title}<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(name: str, path: epath.PathLike) -> str:
    data = base64.b64encode(epath.Path(path).read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}"></figure>'


def render(title: str, sections: Sequence, figures: Mapping[str, epath.PathLike]) -> str:
    """The HTML page: each section's paragraphs, tables, embedded figures and bullet list, in order."""
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    for section in sections:
        parts.append(f"<h2>{_inline(section.title)}</h2>")
        parts += [f"<p>{_inline(p)}</p>" for p in section.paragraphs if p]
        parts += [_table(t) for t in section.tables]
        parts += [_figure(name, figures[name]) for name in section.figures if name in figures]
        if section.bullets:
            parts.append("<ul>" + "".join(f"<li>{_inline(b)}</li>" for b in section.bullets) + "</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
