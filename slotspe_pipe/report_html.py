"""HTML building blocks of the run report: escaping, tables, embedded images, the page shell.

The report must be one self-contained file that opens offline (a hospital workstation, an email
attachment, Snakemake's report viewer), so there is no template engine, no CDN and no external
asset: styles are inline, images are base64 data URIs downscaled here (PNG for plots, JPEG for
tissue images), and the only script (optional table sorting) is a few inline lines. Every value
that reaches the page goes through ``esc`` unless it is already markup (``Html``), so slide ids or
error messages with ``<`` or ``&`` cannot break the page.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from PIL import Image, UnidentifiedImageError

# Lists longer than this are folded into a <details> so a 5,000-gene list does not swamp the page.
LIST_PREVIEW = 30
# Nesting depth beyond which generic JSON is shown as compact text instead of nested tables.
MAX_DEPTH = 3
JPEG_QUALITY = 85


@dataclass(frozen=True)
class Html:
    """Markup that is already safe to insert as is (built by the helpers in this module)."""

    markup: str

    def __str__(self) -> str:
        return self.markup


def esc(value: Any) -> str:
    """Text for the page: formatted like ``fmt`` and HTML-escaped."""
    return html.escape(fmt(value))


def piece(value: Any) -> str:
    """Markup for ``value``: ``Html`` passes through, anything else is formatted and escaped."""
    return value.markup if isinstance(value, Html) else esc(value)


def join(parts: Iterable[Any], sep: str = "") -> Html:
    return Html(sep.join(piece(p) for p in parts))


def fmt(value: Any, digits: int = 4) -> str:
    """Human formatting: None/NaN as an en dash, floats to ``digits`` significant digits."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.{digits}g}"
    if hasattr(value, "item") and not isinstance(value, str | bytes):  # numpy scalar
        return fmt(value.item(), digits)
    return str(value)


def fmt_fixed(value: Any, decimals: int = 3) -> str:
    """A number with fixed decimals (metrics), an en dash when missing."""
    number = as_float(value)
    return "–" if number is None else f"{number:.{decimals}f}"


def as_float(value: Any) -> float | None:
    """``value`` as a finite float, or None for missing, empty, NaN or non-numeric values."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def tag(name: str, content: Any = "", **attrs: Any) -> Html:
    """``<name attrs>content</name>``; attribute ``cls`` becomes ``class``; None attrs are dropped."""
    rendered = "".join(
        f' {"class" if key == "cls" else key.replace("_", "-")}="{html.escape(str(val), quote=True)}"'
        for key, val in attrs.items()
        if val is not None
    )
    return Html(f"<{name}{rendered}>{piece(content)}</{name}>")


def badge(text: str, kind: str) -> Html:
    """A coloured status pill; ``kind`` is one of ok, failed, missing, excluded, warn, info."""
    return tag("span", text, cls=f"badge badge-{kind}")


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    sortable: bool = False,
    cls: str = "",
    row_classes: Sequence[str | None] | None = None,
    numeric: Sequence[int] = (),
    nowrap: Sequence[int] = (),
) -> Html:
    """A table; ``numeric`` columns are right-aligned, ``nowrap`` columns never break lines.

    Click-to-sort on the headers when ``sortable`` (optional inline script; works without it).
    """
    rows = list(rows)
    classes = " ".join(c for c in ("data", "sortable" if sortable else "", cls) if c)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        row_cls = row_classes[i] if row_classes is not None else None
        cells = "".join(_cell(v, j in numeric, j in nowrap) for j, v in enumerate(row))
        body.append(f'<tr class="{row_cls}">{cells}</tr>' if row_cls else f"<tr>{cells}</tr>")
    return Html(
        f'<div class="table-wrap"><table class="{classes}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _cell(value: Any, numeric: bool, nowrap: bool) -> str:
    classes = " ".join(c for c, on in (("num", numeric), ("nowrap", nowrap)) if on)
    return f'<td class="{classes}">{piece(value)}</td>' if classes else f"<td>{piece(value)}</td>"


def kv_table(
    pairs: Mapping[str, Any] | Iterable[tuple[str, Any]], *, humanize_keys: bool = True
) -> Html:
    """A two-column key/value table; JSON keys are humanised (``patients_in`` -> ``Patients in``)."""
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    label = humanize if humanize_keys else str
    rows = "".join(
        f"<tr><th>{html.escape(label(k))}</th><td>{piece(v)}</td></tr>" for k, v in items
    )
    return Html(f'<table class="kv"><tbody>{rows}</tbody></table>')


def humanize(key: str) -> str:
    """``n_patients_in`` -> ``N patients in``: JSON keys as readable labels."""
    text = str(key).replace("_", " ").strip()
    # Only ASCII is capitalised: "µm/px" must not become "Μm/px".
    return text[:1].upper() + text[1:] if text[:1].isascii() else text


def details(summary: Any, content: Any, *, open_: bool = False, cls: str | None = None) -> Html:
    flag = " open" if open_ else ""
    klass = f' class="{cls}"' if cls else ""
    return Html(
        f"<details{klass}{flag}><summary>{piece(summary)}</summary>{piece(content)}</details>"
    )


def note(text: Any, kind: str = "info") -> Html:
    """A callout box; kind is info, warn, failed or ok."""
    return tag("div", text, cls=f"note note-{kind}")


def render_value(value: Any, depth: int = 0) -> Html:
    """Generic JSON -> HTML: dicts as key/value tables, lists of records as tables, long lists folded.

    Used for records whose exact keys other stages own (the cohort summary, settings), so a new key
    shows up in the report without a change here.
    """
    if isinstance(value, Mapping):
        if not value:
            return Html('<span class="muted">(empty)</span>')
        if depth >= MAX_DEPTH:
            return tag("code", _compact(value))
        rendered = kv_table((k, render_value(v, depth + 1)) for k, v in value.items())
        if len(value) > LIST_PREVIEW:  # e.g. hundreds of excluded ids: folded, never dropped
            return details(f"{len(value)} entries", rendered)
        return rendered
    if isinstance(value, list | tuple):
        if not value:
            return Html('<span class="muted">(none)</span>')
        if all(isinstance(v, Mapping) for v in value) and depth < MAX_DEPTH:
            keys: list[str] = []
            for record in value:
                keys += [k for k in record if k not in keys]
            rows = [[_scalar_or_compact(r.get(k)) for k in keys] for r in value]
            return table([humanize(k) for k in keys], rows, sortable=len(rows) > 5)
        if all(not isinstance(v, Mapping | list | tuple) for v in value):
            text = ", ".join(fmt(v) for v in value)
            if len(value) <= LIST_PREVIEW:
                return Html(html.escape(text))
            head = ", ".join(fmt(v) for v in value[:LIST_PREVIEW])
            return details(f"{head}, … ({len(value)} in all)", tag("p", text, cls="long-list"))
        return tag("code", _compact(value))
    return Html(esc(value))


def _scalar_or_compact(value: Any) -> Any:
    return _compact(value) if isinstance(value, Mapping | list | tuple) else value


def _compact(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_compact(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_compact(v) for v in value) + "]"
    return fmt(value)


class ImageError(ValueError):
    """An image file could not be read or encoded for the report."""


def png_data_uri(
    path: str | os.PathLike[str], max_width: int, max_height: int | None = None
) -> str:
    """Read an image, downscale it to fit ``max_width`` x ``max_height`` px, return a PNG data URI.

    Images are reduced to a 256-colour palette: plots stay crisp and small. Raises ImageError
    naming the file.
    """
    return raster_data_uri(_open(path), max_width, max_height, fmt="png")


def raster_data_uri(
    img: Image.Image,
    max_width: int,
    max_height: int | None = None,
    *,
    fmt: str = "png",
    quality: int = JPEG_QUALITY,
) -> str:
    """An image downscaled to fit ``max_width`` x ``max_height`` px as a data URI.

    ``fmt="png"``: 256-colour palette PNG, for plots and line art (crisp text and lines).
    ``fmt="jpeg"``: for tissue images (thumbnails, attention overlays), where JPEG at
    ``quality`` 85 is about half the size of the palette PNG, shows no visible loss on H&E and
    encodes ~100x faster; the report stays a few MB for hundreds of slides.
    """
    image = _flatten(img)
    image.thumbnail((max_width, max_height or max_width * 4), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if fmt == "jpeg":
        image.save(buf, format="JPEG", quality=quality, optimize=True)
        mime = "image/jpeg"
    elif fmt == "png":
        # Fast octree: 25x quicker than median cut at 400 px, no visible loss on plots.
        palette = image.quantize(
            colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE
        )
        palette.save(buf, format="PNG", optimize=True)
        mime = "image/png"
    else:
        raise ValueError(f"image format {fmt!r}: expected png or jpeg")
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _open(path: str | os.PathLike[str]) -> Image.Image:
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise ImageError(f"{path}: not a readable image ({exc})") from exc


def _flatten(img: Image.Image) -> Image.Image:
    """RGB on white: transparent plots and RGBA thumbnails look the same on any page background."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def image(
    path: str | os.PathLike[str] | None,
    *,
    alt: str,
    max_width: int = 400,
    max_height: int | None = None,
    what: str = "image",
    fmt: str = "png",
) -> Html:
    """An embedded <img> (``fmt`` png or jpeg), or a visible 'missing'/'unreadable' marker
    naming the file."""
    if path is None:
        return tag("div", f"{what}: not available", cls="img-missing")
    path = Path(path)
    if not path.is_file():
        return tag("div", f"{what} missing: {path}", cls="img-missing")
    try:
        uri = raster_data_uri(_open(path), max_width, max_height, fmt=fmt)
    except ImageError as exc:
        return tag("div", f"{what} unreadable: {exc}", cls="img-missing")
    return img_tag(uri, alt)


def embed(
    img: Image.Image,
    *,
    alt: str,
    max_width: int = 400,
    max_height: int | None = None,
    fmt: str = "jpeg",
) -> Html:
    """An <img> of an image made in memory (e.g. a rendered overlay), embedded as a data URI."""
    return img_tag(raster_data_uri(img, max_width, max_height, fmt=fmt), alt)


def img_tag(uri: str, alt: str) -> Html:
    return Html(f'<img src="{uri}" alt="{html.escape(alt, quote=True)}" loading="lazy">')


def figure(img: Html, caption: Any) -> Html:
    return Html(f"<figure>{img.markup}<figcaption>{piece(caption)}</figcaption></figure>")


def section(anchor: str, title: str, *content: Any) -> Html:
    body = "".join(piece(c) for c in content)
    return Html(
        f'<section id="{html.escape(anchor, quote=True)}"><h2>{html.escape(title)}</h2>{body}</section>'
    )


_PAGE = Template(
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="slotspe-pipe $version">
<title>$title</title>
<style>$css</style>
</head>
<body>
<header class="top">
<h1>$title</h1>
<div class="meta">$meta</div>
<nav>$nav</nav>
</header>
<main>
$body
</main>
<footer>$footer</footer>
<script>$script</script>
</body>
</html>
"""
)

_CSS = """
:root { --ok:#1e7b34; --ok-bg:#e5f4e8; --bad:#b3261e; --bad-bg:#fbe9e7; --warn:#8a5a00;
  --warn-bg:#fff4d6; --grey:#5f6368; --grey-bg:#eef0f2; --line:#d9dde3; --accent:#1f4e79; }
* { box-sizing: border-box; }
body { margin:0; font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue",
  Arial, "DejaVu Sans", sans-serif; font-size:14px; line-height:1.45; color:#1f2328; background:#f6f7f9; }
header.top { background:#fff; border-bottom:1px solid var(--line); padding:18px 32px 10px; }
h1 { margin:0 0 4px; font-size:22px; color:var(--accent); }
h2 { font-size:18px; margin:0 0 12px; padding-bottom:6px; border-bottom:2px solid var(--accent);
  color:var(--accent); }
h3 { font-size:15px; margin:18px 0 8px; }
.meta { color:var(--grey); font-size:13px; }
.meta { display:flex; flex-wrap:wrap; column-gap:20px; row-gap:2px; }
nav { margin-top:10px; font-size:13px; }
nav a { color:var(--accent); text-decoration:none; margin-right:16px; }
nav a:hover { text-decoration:underline; }
main { max-width:1280px; margin:0 auto; padding:16px 32px 40px; }
section { background:#fff; border:1px solid var(--line); border-radius:6px; padding:16px 20px;
  margin:16px 0; }
section#failures { border-left:5px solid var(--bad); }
.table-wrap { overflow-x:auto; }
table { border-collapse:collapse; font-size:13px; }
table.data { width:100%; }
table.data.narrow { width:auto; min-width:40%; }
table.data td.nowrap { white-space:nowrap; }
table.data th, table.data td { padding:5px 9px; border-bottom:1px solid var(--line); text-align:left;
  vertical-align:top; }
table.data thead th { background:#e8edf3; font-weight:600; vertical-align:bottom; }
table.data tbody tr:nth-child(even) { background:#f7f9fb; }
table.data tbody tr.row-failed { background:var(--bad-bg); }
table.data tbody tr.row-missing { background:var(--warn-bg); }
table.data tbody tr.row-excluded { background:var(--grey-bg); }
table.data td.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
table.sortable thead th { cursor:pointer; }
table.sortable thead th:hover { background:#d9e2ec; }
table.kv th { text-align:left; font-weight:600; color:#3c4043; padding:3px 14px 3px 0;
  vertical-align:top; white-space:nowrap; }
table.kv td { padding:3px 0; vertical-align:top; }
table.kv table.kv { margin:0; }
.badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; font-weight:600;
  white-space:nowrap; }
.badge-ok { background:var(--ok-bg); color:var(--ok); }
.badge-failed { background:var(--bad-bg); color:var(--bad); }
.badge-missing, .badge-warn { background:var(--warn-bg); color:var(--warn); }
.badge-excluded, .badge-info { background:var(--grey-bg); color:var(--grey); }
.note { padding:8px 12px; border-radius:4px; margin:8px 0; }
.note-info { background:var(--grey-bg); }
.note-warn { background:var(--warn-bg); color:#5c3d00; }
.note-failed { background:var(--bad-bg); color:#7a1912; }
.note-ok { background:var(--ok-bg); color:#14521f; }
.stats { display:grid; grid-template-columns:repeat(auto-fit, minmax(96px, 1fr)); gap:8px; }
.stat { background:#f7f9fb; border:1px solid var(--line); border-radius:6px;
  padding:8px 10px; }
.stat .v { font-size:24px; font-weight:600; font-variant-numeric:tabular-nums; }
.stat .k { color:var(--grey); font-size:11px; text-transform:uppercase; letter-spacing:.02em; }
.stat.bad .v { color:var(--bad); } .stat.good .v { color:var(--ok); } .stat.warn .v { color:var(--warn); }
.cards { display:grid; grid-template-columns:repeat(auto-fill, minmax(300px, 1fr)); gap:14px;
  margin-top:14px; }
.card { border:1px solid var(--line); border-radius:6px; padding:10px; background:#fff; }
.card.failed { border-color:#e6a29c; } .card.missing { border-color:#e8c872; }
.card h3 { margin:0 0 6px; font-size:14px; display:flex; justify-content:space-between; gap:8px;
  word-break:break-all; }
.card img { max-width:100%; height:auto; display:block; margin:4px auto; border:1px solid var(--line); }
.card .facts { font-size:12px; color:#3c4043; }
.card .reason { color:var(--bad); font-size:12px; }
.figs { display:flex; flex-wrap:wrap; gap:16px; }
figure { margin:0; max-width:100%; }
figure img { max-width:100%; height:auto; border:1px solid var(--line); display:block; }
figcaption { font-size:12px; color:var(--grey); margin-top:4px; }
.img-missing { color:var(--warn); background:var(--warn-bg); font-size:12px; padding:18px 8px;
  text-align:center; border-radius:4px; word-break:break-all; }
details { margin:6px 0; }
details summary { cursor:pointer; color:var(--accent); }
.muted { color:var(--grey); }
.warn-text { color:var(--warn); word-break:break-all; }
.long-list { max-height:240px; overflow:auto; font-size:12px; }
code { font-size:12px; background:#f1f3f5; padding:0 3px; border-radius:3px; word-break:break-all; }
.attn { display:flex; flex-direction:column; gap:14px; }
.attn-patient { border:1px solid var(--line); border-radius:6px; padding:8px 10px; background:#fafbfc; }
.attn-patient .who { font-weight:600; font-size:13px; margin-bottom:4px; }
.attn-patient .figs { gap:12px; margin:6px 0; }
.attn-patient figure { max-width:600px; }
.attn-omics { display:flex; flex-wrap:wrap; gap:8px 28px; margin-top:6px; }
.attn-omics h4 { margin:4px 0; font-size:12px; font-weight:600; }
table.pw { font-size:12px; }
table.pw td { padding:1px 8px 1px 0; vertical-align:middle; }
table.pw td.pw-name { max-width:300px; word-break:break-word; }
table.pw td.pw-bar { width:110px; }
.pbar { background:var(--accent); height:9px; border-radius:2px; min-width:1px; }
footer { max-width:1280px; margin:0 auto 24px; padding:0 32px; color:var(--grey); font-size:12px; }
@media print { nav, details summary { display:none; } section { break-inside:avoid; } }
"""

# Optional progressive enhancement: click a header of a .sortable table to sort by that column.
_SCRIPT = """
document.querySelectorAll("table.sortable thead th").forEach(function (th) {
  th.title = "click to sort";
  th.addEventListener("click", function () {
    var tbody = th.closest("table").tBodies[0];
    var col = Array.prototype.indexOf.call(th.parentNode.children, th);
    var asc = th.dataset.dir !== "asc";
    th.dataset.dir = asc ? "asc" : "desc";
    var rows = Array.prototype.slice.call(tbody.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].textContent.trim(), y = b.cells[col].textContent.trim();
      var nx = parseFloat(x.replace(/,/g, "")), ny = parseFloat(y.replace(/,/g, ""));
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? c : -c;
    });
    rows.forEach(function (r) { tbody.appendChild(r); });
  });
});
"""


def page(
    *,
    title: str,
    meta: Sequence[tuple[str, Any]],
    nav: Sequence[tuple[str, str]],
    body: Sequence[Html],
    footer: Any,
    version: str,
) -> str:
    """The whole HTML document: header with run facts and a table of contents, then the sections."""
    return _PAGE.substitute(
        title=html.escape(title),
        version=html.escape(version),
        css=_CSS,
        meta="".join(f"<span><b>{html.escape(k)}:</b> {piece(v)}</span>" for k, v in meta),
        nav="".join(
            f'<a href="#{html.escape(a, quote=True)}">{html.escape(t)}</a>' for a, t in nav
        ),
        body="\n".join(b.markup for b in body),
        footer=piece(footer),
        script=_SCRIPT,
    )
