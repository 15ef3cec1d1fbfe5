"""The audit as one self-contained HTML page: thumbnails inline (base64 JPEG), no scripts,
no external files, so it opens offline and can be mailed as it is.

Sections in the order a reader should act on them: leaks, label issues, duplicates,
outliers, bad files, class counts. Each shows at most `limit` entries with thumbnails; the
CSV files beside the page hold every entry.
"""

from __future__ import annotations

import html
from typing import Any

__all__ = ["write_html"]

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
    from visionzoo.diagnose.data_audit import thumbnail_data_uri

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
    from visionzoo.diagnose.data_audit import thumbnail_data_uri

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
