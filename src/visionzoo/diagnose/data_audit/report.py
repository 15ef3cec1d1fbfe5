"""The audit as one self-contained HTML page: thumbnails inline (base64 JPEG), no scripts,
no external files, so it opens offline and can be mailed as it is.

Sections in the order a reader should act on them: leaks, label issues, duplicates,
outliers, bad files, class counts. Each shows at most `limit` entries with thumbnails; the
CSV files beside the page hold every entry. A CSV cell that a spreadsheet would run as a
formula (a file named `=cmd|...`) is written with a leading `'` (`data.exclude.spreadsheet_cell`).
"""

from __future__ import annotations

import base64
import csv
import html
import io
from pathlib import Path
from typing import Any

from visionzoo.data.decode import ImageDecodeError, decode_image
from visionzoo.data.exclude import spreadsheet_cell
from visionzoo.files import atomic_write, atomic_write_json

__all__ = ["FINDINGS", "CSV_FIELDS", "write_report", "write_html", "thumbnail_data_uri"]

FINDINGS = ("leaks", "label_issues", "duplicates", "outliers", "bad_files", "class_counts")
CSV_FIELDS = {
    "leaks": ("path", "duplicate_of", "split", "duplicate_split", "similarity", "hash_distance", "kind"),
    "duplicates": ("path", "duplicate_of", "split", "duplicate_split", "similarity", "hash_distance", "kind"),
    "label_issues": ("path", "given", "suggested", "score", "split"),
    "outliers": ("path", "score", "split", "label"),
    "bad_files": ("path", "reason", "split"),
}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; background: #fafafa; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 2px solid #ccc; padding-bottom: .2em; }
.summary td, .counts td, .counts th { padding: .2em .8em; text-align: right; }
.summary td:first-child, .counts td:first-child { text-align: left; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 6px; width: 220px;
        font-size: 12px; overflow-wrap: anywhere; }
.card img { width: 96px; height: 96px; object-fit: contain; background: #eee; image-rendering: pixelated; }
.pair { display: flex; gap: 6px; }
.note { color: #666; } .bad { color: #a00; }
"""


def _image(uri: str | None, alt: str) -> str:
    if uri is None:
        return f'<span class="bad">({html.escape(alt)}: not decodable)</span>'
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def _card(body: str, caption: str) -> str:
    return f'<div class="card">{body}<div>{caption}</div></div>'


def _pair_cards(entries: list[dict[str, Any]], limit: int) -> str:
    cards = []
    for entry in entries[:limit]:
        pictures = (f'<div class="pair">{_image(thumbnail_data_uri(entry["path"]), "image")}'
                    f'{_image(thumbnail_data_uri(entry["duplicate_of"]), "duplicate of")}</div>')
        caption = (f'<b>{html.escape(entry["split"])}</b>: {html.escape(entry["path"])}<br>'
                   f'duplicate of <b>{html.escape(entry["duplicate_split"])}</b>: {html.escape(entry["duplicate_of"])}'
                   f'<br>{entry["kind"]}, similarity {entry["similarity"]:.3f}, hash distance {entry["hash_distance"]}')
        cards.append(_card(pictures, caption))
    return _grid(cards, len(entries), limit)


def _grid(cards: list[str], total: int, limit: int) -> str:
    if not total:
        return '<p class="note">none found</p>'
    more = f'<p class="note">showing {limit} of {total}; the CSV lists all</p>' if total > limit else ""
    return f'<div class="grid">{"".join(cards)}</div>{more}'


def write_html(report: dict[str, Any], limit: int = 200) -> str:
    """The report page as a string."""
    summary = report.get("summary", {})
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                   for k, v in summary.items() if k != "settings")
    sections = []

    sections.append(("leaks", "Leaks across splits", "Images of a later split that also appear in an earlier one "
                     "(validation or test images seen in training): they inflate validation scores.",
                     _pair_cards(report["leaks"], limit)))
    issues = [_card(_image(thumbnail_data_uri(e["path"]), "image"),
                    f'given <b>{html.escape(e["given"])}</b>, suggested <b>{html.escape(e["suggested"])}</b>'
                    f'<br>label quality {e["score"]:.3f}<br>{html.escape(e["path"])}')
              for e in report["label_issues"][:limit]]
    sections.append(("label-issues", "Label issues", "Images whose out-of-sample prediction disagrees with their "
                     "label (cleanlab's confident learning); lowest label quality first.",
                     _grid(issues, len(report["label_issues"]), limit)))
    sections.append(("duplicates", "Duplicates within a split", "Exact (same bytes) and near (similar embedding "
                     "and perceptual hash) duplicates.", _pair_cards(report["duplicates"], limit)))
    outliers = [_card(_image(thumbnail_data_uri(e["path"]), "image"),
                      f'score {e["score"]:.3f} ({html.escape(e["label"])})<br>{html.escape(e["path"])}')
                for e in report["outliers"][:limit]]
    sections.append(("outliers", "Outliers", "Images far from their nearest neighbours in embedding space.",
                     _grid(outliers, len(report["outliers"]), limit)))
    bad = "".join(f'<li>{html.escape(e["path"])}: <span class="bad">{html.escape(e["reason"])}</span></li>'
                  for e in report["bad_files"])
    sections.append(("bad-files", "Bad files", "Files that do not decode as images.",
                     f"<ul>{bad}</ul>" if bad else '<p class="note">none found</p>'))
    counts = report["class_counts"]
    splits = list(counts)
    classes = list(next(iter(counts.values()), {}))
    table = ("<table class='counts'><tr><th>class</th>" + "".join(f"<th>{html.escape(s)}</th>" for s in splits)
             + "</tr>" + "".join("<tr><td>" + html.escape(c) + "</td>" + "".join(f"<td>{counts[s][c]}</td>"
                                                                              for s in splits) + "</tr>"
                                 for c in classes) + "</table>")
    sections.append(("class-counts", "Class counts", "Images per class and split.", table))

    parts = []
    for key, title, note, content in sections:
        count = len(classes) if key == "class-counts" else len(report[key.replace("-", "_")])
        parts.append(f'<section id="{key}"><h2>{title} ({count})</h2><p class="note">{note}</p>{content}</section>')
    body = "".join(parts)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>visionzoo audit</title>"
            f"<style>{STYLE}</style></head><body><h1>visionzoo audit</h1>"
            f"<table class='summary'>{rows}</table>{body}</body></html>")


def write_report(report: dict[str, Any], out: Path) -> None:
    """OUT/audit.json, a CSV per finding, class_counts.csv and audit.html."""
    atomic_write_json(out / "audit.json", report)
    for finding, fields in CSV_FIELDS.items():
        with open(out / f"{finding}.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows({key: spreadsheet_cell(value) for key, value in row.items()} for row in report[finding])
    with open(out / "class_counts.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", *map(spreadsheet_cell, report["class_counts"])])
        classes = next(iter(report["class_counts"].values()), {})
        for name in classes:
            writer.writerow([spreadsheet_cell(name), *(counts[name] for counts in report["class_counts"].values())])
    atomic_write(out / "audit.html", write_html(report).encode())


def thumbnail_data_uri(path: str, side: int = 96) -> str | None:
    """A small JPEG of the image as a data: URI, or None when it does not decode."""
    try:
        image = decode_image(path)
    except ImageDecodeError:
        return None
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
