"""A tiny report document rendered to Markdown and to a self-contained HTML page.

Reports are built once as a list of blocks (heading, paragraph, bullet list, table, figure) and
written twice: ``report.md`` links the PNG files, the HTML page embeds them as base64 so it can be
mailed or archived alone. Hand-written because no markdown/tabulate package is a dependency.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
th.num, td.num { text-align: right; }
th { background: #f2f2f2; }
code { background: #f4f4f4; padding: 0 3px; }
img { max-width: 100%; border: 1px solid #eee; }
.warning { background: #fff3cd; border: 1px solid #e0c060; padding: 0.6em 1em; }
figcaption { color: #555; font-size: 0.9em; }
"""


@dataclass
class Document:
    """Ordered report blocks; ``to_markdown`` / ``to_html`` render them."""

    title: str
    blocks: list[tuple] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", level, text))

    def text(self, text: str) -> None:
        """A paragraph; inline `code`, **bold** and `[label](href)` links are understood."""
        self.blocks.append(("text", text))

    def warning(self, text: str) -> None:
        """A paragraph that must not be overlooked (missing folds, overlapping folds)."""
        self.blocks.append(("warning", text))

    def bullets(self, items: list[str]) -> None:
        self.blocks.append(("bullets", list(items)))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", list(header), [list(map(str, r)) for r in rows]))

    def figure(self, path: str, caption: str) -> None:
        """``path``: PNG file relative to the folder the report is written to."""
        self.blocks.append(("figure", path, caption))

    # --- rendering -----------------------------------------------------------------------------

    def to_markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        for block in self.blocks:
            kind = block[0]
            if kind == "heading":
                lines += ["#" * block[1] + " " + block[2], ""]
            elif kind == "text":
                lines += [block[1], ""]
            elif kind == "warning":
                lines += ["> **Warning:** " + block[1], ""]
            elif kind == "bullets":
                lines += [f"- {item}" for item in block[1]] + [""]
            elif kind == "table":
                header, rows = block[1], block[2]
                lines.append("| " + " | ".join(header) + " |")
                rules = ["---:" if num else "---" for num in numeric_columns(rows, len(header))]
                lines.append("|" + "|".join(rules) + "|")
                lines += ["| " + " | ".join(r) + " |" for r in rows]
                lines.append("")
            elif kind == "figure":
                lines += [f"![{block[2]}]({block[1]})", "", f"*{block[2]}*", ""]
        return "\n".join(lines)

    def to_html(self, base_dir: str | Path) -> str:
        """HTML page with every figure read from ``base_dir / path`` and embedded as base64 PNG."""
        base_dir = Path(base_dir)
        parts = [
            f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>",
            f"<style>{_CSS}</style></head><body>",
            f"<h1>{html.escape(self.title)}</h1>",
        ]
        for block in self.blocks:
            kind = block[0]
            if kind == "heading":
                parts.append(f"<h{block[1]}>{_inline(block[2])}</h{block[1]}>")
            elif kind == "text":
                parts.append(f"<p>{_inline(block[1])}</p>")
            elif kind == "warning":
                parts.append(f"<p class='warning'><b>Warning:</b> {_inline(block[1])}</p>")
            elif kind == "bullets":
                parts.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block[1]) + "</ul>")
            elif kind == "table":
                cls = [" class='num'" if num else "" for num in numeric_columns(block[2], len(block[1]))]
                head = "".join(f"<th{c}>{_inline(h)}</th>" for c, h in zip(cls, block[1]))
                body = "".join(
                    "<tr>" + "".join(f"<td{c}>{_inline(v)}</td>" for c, v in zip(cls, r)) + "</tr>" for r in block[2]
                )
                parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif kind == "figure":
                data = base64.b64encode((base_dir / block[1]).read_bytes()).decode("ascii")
                parts.append(
                    f"<figure><img alt='{html.escape(block[2])}' src='data:image/png;base64,{data}'>"
                    f"<figcaption>{_inline(block[2])}</figcaption></figure>"
                )
        parts.append("</body></html>")
        return "\n".join(parts)

    def write(self, out_dir: str | Path, stem: str) -> tuple[Path, Path]:
        """Write ``<stem>.md`` and ``<stem>.html`` into ``out_dir``; returns both paths."""
        out_dir = Path(out_dir)
        md, page = out_dir / f"{stem}.md", out_dir / f"{stem}.html"
        md.write_text(self.to_markdown(), encoding="utf-8")
        page.write_text(self.to_html(out_dir), encoding="utf-8")
        return md, page


_NUMBER = re.compile(r"^(\*\*)?[+\-−<>~]?\s*(\d|\.\d|n/a$)")


def numeric_columns(rows: list[list[str]], n_columns: int) -> list[bool]:
    """Per column: True when every non-empty cell starts with a number (``0.859 [0.828, 0.886]``,
    ``+0.046``, ``<0.001``, ``n/a``), so it is right-aligned; text columns (and the first, the row
    names) stay left-aligned."""
    numeric = [False]
    for j in range(1, n_columns):
        cells = [r[j].strip() for r in rows if j < len(r) and r[j].strip()]
        numeric.append(bool(cells) and all(_NUMBER.match(c) for c in cells))
    return numeric


def _inline(text: str) -> str:
    """Escape HTML, then render `code`, **bold** and `[label](href)`."""
    out = html.escape(str(text), quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)
    return re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r"<a href='\2'>\1</a>", out)


__all__ = ["Document", "numeric_columns"]
