"""A datasheet per dataset (数据文档; Gebru et al. 2018's "Datasheets for Datasets", the
measurable part): what is in it and what was done to it, as JSON and as Markdown.

* sizes: documents, characters, UTF-8 bytes, words (Han characters count as words), mean and
  largest document length;
* languages: documents per label of the language identifier (en / zh / code by default);
* cleaning: each filter applied, the documents it dropped (by reason) and changed
  (`lmkit.data.clean`'s report);
* duplicates: the duplicate rate, exact and near duplicates and clusters (`lmkit.data.dedup`);
* contamination: per evaluation set the items found in the data (`lmkit.data.decontaminate`);
* tokens: the token count under each tokenizer given.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from lmkit.atomic import atomic_write_text
from lmkit.data.filters.language import LanguageIdentifier
from lmkit.data.filters.words import is_symbol_word, split_words


def _as_dict(report: Any) -> dict[str, Any] | None:
    if report is None:
        return None
    if isinstance(report, (str, os.PathLike)):
        return json.loads(Path(report).read_text(encoding="utf-8"))
    if hasattr(report, "to_dict"):
        return report.to_dict()
    return dict(report)


def build_datasheet(name: str, texts: Iterable[str], *, clean_report: Any = None, dedup_report: Any = None,
                    contamination_report: Any = None, tokenizers: Mapping[str, Any] | None = None,
                    identifier: LanguageIdentifier | None = None, description: str = "") -> dict[str, Any]:
    """The datasheet of the documents `texts` and of the reports of what made them.

    Reports may be report objects, dicts, or paths of the JSON files the CLI writes.
    `tokenizers` maps a name to anything with ``encode(text) -> ids``.
    """
    docs = chars = nbytes = nwords = longest = 0
    languages: dict[str, int] = {}
    tokens = {k: 0 for k in (tokenizers or {})}
    for text in texts:
        docs += 1
        chars += len(text)
        nbytes += len(text.encode("utf-8"))
        nwords += sum(1 for w in split_words(text) if not is_symbol_word(w))
        longest = max(longest, len(text))
        if identifier is not None:
            label = identifier.predict(text)[0]
            languages[label] = languages.get(label, 0) + 1
        for key, tok in (tokenizers or {}).items():
            tokens[key] += len(tok.encode(text))
    sheet: dict[str, Any] = {
        "name": name,
        "description": description,
        "sizes": {"documents": docs, "characters": chars, "bytes": nbytes, "words": nwords,
                  "mean_document_chars": round(chars / docs, 1) if docs else 0.0, "longest_document_chars": longest},
        "languages": dict(sorted(languages.items(), key=lambda kv: -kv[1])),
        "tokens": tokens,
    }
    clean = _as_dict(clean_report)
    if clean is not None:
        sheet["cleaning"] = {"documents_in": clean.get("documents_in"), "documents_out": clean.get("documents_out"),
                             "filters": [f["name"] if isinstance(f, dict) else str(f) for f in clean.get("filters", [])],
                             "drop_counts": clean.get("drop_counts", {}), "dropped": clean.get("dropped", {}),
                             "changed": clean.get("changed", {}), "counters": clean.get("counters", {})}
    dedup = _as_dict(dedup_report)
    if dedup is not None:
        sheet["duplicates"] = {k: dedup.get(k) for k in ("documents", "kept", "exact_duplicates", "near_duplicates",
                                                         "duplicate_rate", "clusters", "paragraphs_removed")}
    contamination = _as_dict(contamination_report)
    if contamination is not None:
        sheet["contamination"] = {
            "documents": contamination.get("documents"),
            "contaminated_documents": contamination.get("contaminated_documents"),
            "eval_sets": {k: {"items": v.get("items"), "contaminated_items": v.get("contaminated_items")}
                          for k, v in contamination.get("eval_sets", {}).items()},
        }
    return sheet


def datasheet_markdown(sheet: Mapping[str, Any]) -> str:
    """The datasheet as a Markdown page."""
    s = sheet["sizes"]
    out = [f"# Datasheet: {sheet['name']}", ""]
    if sheet.get("description"):
        out += [sheet["description"], ""]
    out += ["## Sizes", "", "| documents | characters | bytes | words | mean document (chars) | longest |",
            "|---|---|---|---|---|---|",
            f"| {s['documents']:,} | {s['characters']:,} | {s['bytes']:,} | {s['words']:,} | "
            f"{s['mean_document_chars']} | {s['longest_document_chars']:,} |", ""]
    if sheet.get("languages"):
        total = sum(sheet["languages"].values()) or 1
        out += ["## Languages", "", "| label | documents | share |", "|---|---|---|"]
        out += [f"| {k} | {v:,} | {100 * v / total:.1f} % |" for k, v in sheet["languages"].items()] + [""]
    if sheet.get("tokens"):
        out += ["## Tokens", "", "| tokenizer | tokens |", "|---|---|"]
        out += [f"| {k} | {v:,} |" for k, v in sheet["tokens"].items()] + [""]
    clean = sheet.get("cleaning")
    if clean:
        out += ["## Cleaning", "", f"{clean['documents_in']:,} documents in, {clean['documents_out']:,} kept.", "",
                "| filter | dropped | changed | reasons |", "|---|---|---|---|"]
        for name in clean["filters"]:
            reasons = ", ".join(f"{r} {n:,}" for r, n in sorted(clean["dropped"].get(name, {}).items(), key=lambda kv: -kv[1]))
            out.append(f"| {name} | {clean['drop_counts'].get(name, 0):,} | {clean['changed'].get(name, 0):,} | {reasons or '-'} |")
        out.append("")
    dup = sheet.get("duplicates")
    if dup:
        out += ["## Duplicates", "", f"Duplicate rate {100 * (dup.get('duplicate_rate') or 0):.2f} %: "
                f"{dup.get('exact_duplicates')} exact and {dup.get('near_duplicates')} near duplicates of "
                f"{dup.get('documents')} documents, {dup.get('clusters')} clusters.", ""]
    con = sheet.get("contamination")
    if con:
        out += ["## Contamination", "", f"{con['contaminated_documents']} of {con['documents']} documents hold evaluation items.",
                "", "| eval set | items | found |", "|---|---|---|"]
        out += [f"| {k} | {v['items']} | {v['contaminated_items']} |" for k, v in con["eval_sets"].items()] + [""]
    return "\n".join(out)


def write_datasheet(sheet: Mapping[str, Any], prefix: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``PREFIX.md`` and ``PREFIX.json`` (atomically); returns both paths."""
    prefix = Path(prefix)
    md, js = prefix.with_name(prefix.name + ".md"), prefix.with_name(prefix.name + ".json")
    atomic_write_text(md, datasheet_markdown(sheet) + "\n")
    atomic_write_text(js, json.dumps(sheet, indent=2, ensure_ascii=False) + "\n")
    return md, js
