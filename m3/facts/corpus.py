"""Evidence corpus for claim verification: the clinical guideline digests shipped in `open-medicine`.

    from m3.facts.corpus import load_guideline_corpus, load_passages_jsonl, Corpus
    corpus = load_guideline_corpus()                      # 43 guidelines -> ~1,080 passages, < 1 s
    corpus.version                                        # sha256 of the passages, 12 hex
    corpus.passages[0].id                                 # "acc_aha_af_2023#anticoagulation#0"
    vecs = corpus.embeddings()                            # (n, 384) MiniLM, cached on disk by version
    mine = Corpus(load_passages_jsonl("my_passages.jsonl"))   # {"id","text","source","section"?,"title"?}

`open_medicine/guidelines/registry.json` lists each guideline (id, title, sections) and
`guidelines/content/<id>/<section>.md` holds one markdown digest per section. Chunking is
sentence-aligned and aims at `ChunkConfig.min_words`..`max_words` words per passage; it never
crosses a file, prefers to cut at level-2 headings, and keeps the context a bare line would lose:
  * every passage starts with the heading path of its first line ("# Stroke Risk Assessment › Choice of Anticoagulant"),
    and a later line "# <sub-heading>" marks where a new sub-section begins;
  * list items carry their lead-in ("Men: CHA2DS2-VASc = 0: No antithrombotic therapy ...") and
    nested items their parent's label ("Apixaban: Dose Reduction: Reduce to 2.5 mg BID if ...");
  * table rows become lines "row label — column: value; column: value";
  * flowchart code blocks become one line per step; the package's tool adverts are dropped.
Each output line of a passage is one unit (a paragraph, list item or table row), so
`m3.text.lexical.split_sentences(passage.text)` yields the premises a verifier compares claims with.

Embeddings are computed once per (corpus version, embedding model) and stored as
`<cache>/corpus/<version>/embeddings-<model tag>.npy` (with `passages.jsonl` beside it for
inspection). The cache root is `$M3_CACHE_DIR` or `.cache/m3` under the working directory.

Limits: English markdown only; the digests are summaries written for the package, not the full
guidelines, so a claim absent from them is not necessarily wrong (it is "Uncertain"). Encoding the
whole corpus takes 1-3 minutes on 2 CPU cores the first time (then a np.load of ~1.6 MB).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from m3.facts.types import Passage
from m3.text.lexical import split_sentences

CHUNKER_VERSION = "md-chunk-v1"  # bump when chunking changes (it changes every passage id/text anyway)
ENV_CACHE = "M3_CACHE_DIR"
# Heading lines in passage text start with this, so a verifier can tell context from premises
# (`m3.text.lexical.split_sentences` strips it, like any markdown header marker).
HEADING_MARK = "# "
HEADING_SEP = " › "  # between levels of a heading path; headings themselves contain ">" ("Score > 4.0")


def cache_root() -> Path:
    """`$M3_CACHE_DIR`, else `.cache/m3` under the current directory (not created here)."""
    return Path(os.environ.get(ENV_CACHE, "").strip() or ".cache/m3").expanduser()


@dataclass(frozen=True)
class ChunkConfig:
    """Passage size in words: chunks grow to `min_words` at least and stop before `max_words`
    when they can; a single sentence longer than `max_words` stays whole."""

    min_words: int = 80
    max_words: int = 150
    # List lead-ins up to this long ("Men:", "Women:") are prefixed to each item; longer ones
    # ("Standard dosing and criteria for dose reduction in non-valvular AF:") stay a line of their own.
    lead_max_words: int = 6

    def __post_init__(self) -> None:
        if not 0 < self.min_words <= self.max_words:
            raise ValueError(
                f"ChunkConfig needs 0 < min_words <= max_words, got {self.min_words}, {self.max_words}; "
                "the default is 80..150"
            )


# --- markdown -> units -----------------------------------------------------------------------

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_LIST = re.compile(r"^(\s*)(?:[-*+•]|\d{1,3}[.)])\s+(.*)$")
_TABLE_ROW = re.compile(r"^\s*\|.*\|\s*$")
_TABLE_SEP = re.compile(r"^\s*\|?[\s:|-]*-{2,}[\s:|-]*\|?\s*$")
_RULE = re.compile(r"^\s*(?:-{3,}|\*{3,}|_{3,})\s*$")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_ARROW = re.compile(r"\s*(?:-+>|=+>|→)\s*")
# The digests advertise the package's own calculators ("OpenMedicine Calculator: `calculate_x`
# -- available via MCP"): tooling, not clinical evidence.
_ADVERT = re.compile(r"OpenMedicine Calculators?|available via MCP", re.I)


def _clean(text: str) -> str:
    text = _LINK.sub(r"\1", text)
    text = re.sub(r"<br\s*/?>", " ", text, flags=re.I)
    text = text.replace("**", "").replace("__", "").replace("`", "").replace("*", "")
    return re.sub(r"\s+", " ", text).strip()


def _label(item: str) -> str | None:
    """What a nested item should be prefixed with: the parent's "Label:" or a short parent."""
    head, sep, _ = item.partition(":")
    if sep and 0 < len(head.split()) <= 6:
        return head.strip()
    return item.rstrip(":. ") if len(item.split()) <= 8 else None


@dataclass
class _Unit:
    text: str
    heading: tuple[str, ...]  # heading path below the H1
    is_heading: bool = False
    level: int = 0


def _table_units(rows: list[str], heading: tuple[str, ...]) -> list[_Unit]:
    cells = [[_clean(c) for c in r.strip().strip("|").split("|")] for r in rows if not _TABLE_SEP.match(r)]
    if not cells:
        return []
    header, body = (cells[0], cells[1:]) if len(cells) > 1 else ([], cells)
    out = []
    for row in body:
        vals = [(header[i] if i < len(header) else "", c) for i, c in enumerate(row)]
        first, rest = vals[0][1], [(h, c) for h, c in vals[1:] if c and c not in {"-", "—", "–"}]
        if not rest:
            text = first
        elif len(vals) == 2:
            text = f"{first}: {rest[0][1]}"
        else:
            text = f"{first} — " + "; ".join(f"{h}: {c}" if h else c for h, c in rest)
        if text:
            out.append(_Unit(text, heading))
    return out


def _line_kind(line: str, in_code: bool) -> str:
    """What one (right-stripped) line of a digest is: fence, code, table, blank, heading, list or text."""
    if line.strip().startswith("```"):
        return "fence"
    if in_code:
        return "code"
    if _TABLE_ROW.match(line):
        return "table"
    if not line.strip() or _RULE.match(line):
        return "blank"
    if _HEADING.match(line):
        return "heading"
    if _LIST.match(line):
        return "list"
    return "text"


class _UnitBuilder:
    """The state of one pass over a digest: the heading path, the open paragraph, table and list.

    `feed(raw)` classifies each line (`_line_kind`) and hands it to the method of its kind;
    `finish()` flushes what is still open and returns the units.
    """

    def __init__(self, cfg: ChunkConfig) -> None:
        self.cfg = cfg
        self.units: list[_Unit] = []
        self.path: list[tuple[int, str]] = []  # (level, text) below the H1
        self.para: list[str] = []
        self.table: list[str] = []
        self.lead: str | None = None  # "Men:" before a list
        self.pending_lead: str | None = None  # a paragraph ending in ":" not yet known to precede a list
        self.parents: list[tuple[int, str | None]] = []  # (indent, label) of open list items
        self.in_code = False

    def heading(self) -> tuple[str, ...]:
        return tuple(t for _, t in self.path)

    def flush_para(self, keep_lead: bool = False) -> None:
        # keep_lead: a blank line may separate a lead-in from its list, so it does not end the lead.
        if self.pending_lead is not None and (self.para or not keep_lead):  # no list followed the lead-in
            self.units.append(_Unit(self.pending_lead, self.heading()))
            self.pending_lead = None
        if not self.para:
            return
        text = _clean(" ".join(self.para))
        self.para.clear()
        if not text or _ADVERT.search(text):
            return
        if text.endswith(":") and len(text.split()) <= self.cfg.lead_max_words:  # maybe a list's lead-in
            self.pending_lead = text
        else:
            self.units.append(_Unit(text, self.heading()))

    def flush_table(self) -> None:
        if self.table:
            self.units.extend(_table_units(self.table, self.heading()))
            self.table.clear()

    def feed(self, raw: str) -> None:
        line = raw.rstrip()
        kind = _line_kind(line, self.in_code)
        if kind not in ("table", "code"):
            self.flush_table()
        getattr(self, f"_{kind}")(line, raw)

    def _fence(self, line: str, raw: str) -> None:
        self.flush_para()
        self.in_code = not self.in_code

    def _code(self, line: str, raw: str) -> None:  # flowchart: one unit per step, arrows as separators
        step = _clean(_ARROW.sub(" → ", line).strip(" →"))
        if step:
            self.units.append(_Unit(step, self.heading()))

    def _table(self, line: str, raw: str) -> None:
        self.flush_para()
        self.table.append(line)

    def _blank(self, line: str, raw: str) -> None:
        self.flush_para(keep_lead=True)

    def _heading(self, line: str, raw: str) -> None:
        self.flush_para()
        m = _HEADING.match(line)
        level, text = len(m.group(1)), _clean(re.sub(r"^\d{1,2}[.)]\s+", "", m.group(2)))
        self.lead, self.parents = None, []
        if level == 1:  # the file title: the registry title and section already say it
            self.path = []
            return
        self.path = [(lv, t) for lv, t in self.path if lv < level] + [(level, text)]
        self.units.append(_Unit(text, self.heading(), is_heading=True, level=level))

    def _list(self, line: str, raw: str) -> None:
        self.flush_para(keep_lead=True)
        if self.pending_lead is not None:
            self.lead, self.pending_lead = self.pending_lead, None
        m = _LIST.match(line)
        indent, own = len(m.group(1).expandtabs(4)), _clean(m.group(2))
        if not own or _ADVERT.search(own):
            return
        self.parents = [(i, lab) for i, lab in self.parents if i < indent]
        prefix = self.parents[-1][1] if self.parents else self.lead
        item = own
        if prefix:  # "Men:" + "Score >= 2: ..." / "Apixaban" + "Dose Reduction: ..."
            item = f"{prefix} {own}" if prefix.endswith(":") else f"{prefix}: {own}"
        self.units.append(_Unit(item, self.heading()))
        self.parents.append((indent, _label(own)))

    def _text(self, line: str, raw: str) -> None:
        stripped = line.lstrip("> ").strip()
        if self.parents and raw[:1] == " " and self.units:  # indented continuation of the last list item
            self.units[-1].text = _clean(self.units[-1].text + " " + stripped)
            return
        if self.parents:  # a plain paragraph closes the list and its lead-in
            self.lead, self.parents = None, []
        self.para.append(stripped)

    def finish(self) -> list[_Unit]:
        self.flush_para()
        self.flush_table()
        return self.units


def _markdown_units(markdown: str, cfg: ChunkConfig = ChunkConfig()) -> list[_Unit]:
    """Split a digest into units (headings, paragraphs, list items, table rows, flow steps)."""
    builder = _UnitBuilder(cfg)
    for raw in markdown.splitlines():
        builder.feed(raw)
    return builder.finish()


# --- units -> passages -----------------------------------------------------------------------


def chunk_markdown(
    markdown: str, *, source: str, section: str, title: str = "", cfg: ChunkConfig = ChunkConfig()
) -> list[Passage]:
    """Sentence-aligned passages of one markdown file, ids "<source>#<section>#<n>" from 0."""
    for name, value in (("source", source), ("section", section)):
        if not value or "#" in value:
            raise ValueError(
                f"{name}={value!r} must be non-empty and free of '#' (it is part of passage ids)"
            )
    chunks: list[list[str]] = []
    cur: list[str] = []
    words = 0
    last_heading: tuple[str, ...] | None = None

    def flush() -> None:
        nonlocal cur, words, last_heading
        if cur:
            chunks.append(cur)
        cur, words, last_heading = [], 0, None

    for unit in _markdown_units(markdown, cfg):
        if unit.is_heading:
            # Prefer to cut where the document changes topic, unless the chunk is still tiny.
            if unit.level <= 2 and words >= cfg.min_words // 2:
                flush()
            continue
        pieces = [unit.text] if len(unit.text.split()) <= cfg.max_words else split_sentences(unit.text)
        for piece in pieces:
            n = len(piece.split())
            if (
                cur
                and words + n > cfg.max_words
                and (words >= cfg.min_words or words + n > 1.5 * cfg.max_words)
            ):
                flush()
            if unit.heading and unit.heading != last_heading:
                # Context line: the full path at a chunk's start, the new sub-heading inside it.
                line = HEADING_MARK + (HEADING_SEP.join(unit.heading) if not cur else unit.heading[-1])
                cur.append(line)
                words += len(line.split()) - 1
                last_heading = unit.heading
            cur.append(piece)
            words += n
    flush()
    # A short tail reads better merged into its predecessor than as a passage of its own.
    if len(chunks) > 1 and sum(len(x.split()) for x in chunks[-1]) < cfg.min_words // 2:
        chunks[-2].extend(chunks.pop())
    return [
        Passage(id=f"{source}#{section}#{i}", text="\n".join(c), source=source, section=section, title=title)
        for i, c in enumerate(chunks)
    ]


def guidelines_dir() -> Path:
    """`open_medicine/guidelines` inside the installed package."""
    try:
        import open_medicine
    except ImportError as exc:
        raise ValueError("the guideline corpus needs `pip install open-medicine==0.12.0`") from exc
    path = Path(open_medicine.__file__).parent / "guidelines"
    if not (path / "registry.json").is_file():
        raise ValueError(
            f"no registry.json under {path}; reinstall open-medicine (pip install --force-reinstall)"
        )
    return path


def guideline_registry() -> list[dict]:
    """The package's registry: one dict per guideline (id, title, doi, year, topics, sections)."""
    return json.loads((guidelines_dir() / "registry.json").read_text(encoding="utf-8"))


def load_guideline_corpus(
    guideline_ids: Sequence[str] | None = None,
    *,
    cfg: ChunkConfig = ChunkConfig(),
    cache_dir: str | Path | None = None,
) -> Corpus:
    """Passages of every registered guideline (or only `guideline_ids`), registry order."""
    root = guidelines_dir()
    registry = guideline_registry()
    known = [g["id"] for g in registry]
    if guideline_ids is not None:
        unknown = sorted(set(guideline_ids) - set(known))
        if unknown:
            raise ValueError(
                f"unknown guideline ids {unknown}; choose from guideline_registry(), e.g. {known[:3]}"
            )
    wanted = set(known if guideline_ids is None else guideline_ids)
    passages: list[Passage] = []
    for g in registry:
        if g["id"] not in wanted:
            continue
        for section in g["sections"]:
            path = root / "content" / g["id"] / f"{section}.md"
            if not path.is_file():
                raise ValueError(f"{path} is listed in registry.json but missing; reinstall open-medicine")
            md = path.read_text(encoding="utf-8")
            passages += chunk_markdown(md, source=g["id"], section=section, title=g["title"], cfg=cfg)
    return Corpus(passages, cache_dir=cache_dir)


def load_passages_jsonl(path: str | Path) -> list[Passage]:
    """User passages, one JSON object a line: {"id", "text", "source", "section"?, "title"?}.
    Blank lines are skipped; any other bad line raises ValueError "file:line: field: problem"."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file; pass a JSONL file of passages")
    out: list[Passage] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc.msg}); write one object per line") from exc
            try:
                p = passage_from_dict(obj)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from exc
            if p.id in seen:
                raise ValueError(
                    f"{where}: id: {p.id!r} already used on line {seen[p.id]}; ids must be unique"
                )
            seen[p.id] = lineno
            out.append(p)
    return out


def passage_from_dict(obj: object) -> Passage:
    """A Passage from {"id", "text", "source", "section"?, "title"?}; ValueError names the field."""
    if not isinstance(obj, dict):
        raise ValueError(f"passage must be a JSON object, got {type(obj).__name__}")
    for name in ("id", "text", "source"):
        if not isinstance(obj.get(name), str) or not obj[name].strip():
            raise ValueError(f"{name}: required non-empty string, got {obj.get(name)!r}")
    for name in ("section", "title"):
        if not isinstance(obj.get(name, ""), str):
            raise ValueError(f"{name}: must be a string when given, got {obj[name]!r}")
    return Passage(
        id=obj["id"].strip(),
        text=obj["text"].strip(),
        source=obj["source"].strip(),
        section=obj.get("section", "").strip(),
        title=obj.get("title", "").strip(),
    )


# --- the corpus ------------------------------------------------------------------------------


class Corpus:
    """An immutable list of passages with a content version and disk-cached embeddings."""

    def __init__(self, passages: Iterable[Passage], *, cache_dir: str | Path | None = None) -> None:
        self.passages: tuple[Passage, ...] = tuple(passages)
        if not self.passages:
            raise ValueError("a corpus needs at least one passage")
        self._by_id: dict[str, int] = {}
        for i, p in enumerate(self.passages):
            if not isinstance(p, Passage):
                raise ValueError(f"passages[{i}] is {type(p).__name__}, expected Passage")
            if p.id in self._by_id:
                raise ValueError(f"duplicate passage id {p.id!r}; ids must be unique")
            self._by_id[p.id] = i
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self._embeddings: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.passages)

    def __repr__(self) -> str:
        return f"Corpus({len(self)} passages, version={self.version!r})"

    @cached_property
    def version(self) -> str:
        """sha256 (12 hex) over every passage's fields in order: any text or id change shows."""
        h = hashlib.sha256(CHUNKER_VERSION.encode())
        for p in self.passages:
            h.update(json.dumps([p.id, p.text, p.source, p.section, p.title], ensure_ascii=False).encode())
            h.update(b"\n")
        return h.hexdigest()[:12]

    def get(self, passage_id: str) -> Passage:
        if passage_id not in self._by_id:
            raise ValueError(f"no passage with id {passage_id!r} in corpus {self.version}")
        return self.passages[self._by_id[passage_id]]

    @staticmethod
    def index_text(p: Passage) -> str:
        """What retrieval sees: the guideline title and section name give every chunk its topic."""
        section = p.section.replace("_", " ")
        return f"{p.title}. {section}.\n{p.text}" if p.title or section else p.text

    def cache_path(self) -> Path:
        return (self.cache_dir or cache_root()) / "corpus" / self.version

    def embeddings(self) -> np.ndarray:
        """(n, d) float32 unit vectors of `index_text`, from disk when this version was encoded before."""
        if self._embeddings is not None:
            return self._embeddings
        from m3.text.embeddings import embed, model_path

        tag = hashlib.sha256(str(model_path()).encode()).hexdigest()[:8]
        folder = self.cache_path()
        file = folder / f"embeddings-{tag}.npy"
        vecs: np.ndarray | None = None
        if file.is_file():
            loaded = np.load(file)
            if loaded.ndim == 2 and loaded.shape[0] == len(self):  # a truncated write is recomputed
                vecs = loaded.astype(np.float32, copy=False)
        if vecs is None:
            vecs = embed([self.index_text(p) for p in self.passages])
            folder.mkdir(parents=True, exist_ok=True)
            _atomic_write(folder / "passages.jsonl", self._jsonl().encode())
            with tempfile.NamedTemporaryFile(dir=folder, suffix=".npy", delete=False) as tmp:
                np.save(tmp, vecs)
            os.replace(tmp.name, file)  # atomic: concurrent builders never see half a file
        vecs.setflags(write=False)
        self._embeddings = vecs
        return vecs

    def _jsonl(self) -> str:
        rows = [
            {"id": p.id, "text": p.text, "source": p.source, "section": p.section, "title": p.title}
            for p in self.passages
        ]
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _atomic_write(path: Path, data: bytes) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)
