"""Reading corpora: plain text files, folders of them, JSONL and Parquet, as one stream of documents.

Everything streams: text and JSONL are read line by line, Parquet in record batches inside row groups
(pyarrow), so memory stays bounded by one row group or one document however big the corpus is. The order
is deterministic (inputs in the order given, folder contents sorted by path), which is what makes prepared
shards reproducible.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from nanoseek.errors import DataError

TEXT_UNITS = ("file", "paragraph", "line")
BAD_FILE_POLICIES = ("error", "skip", "replace")  # what to do with text that is not UTF-8
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
_SNIFF = 8192


@dataclass(frozen=True)
class ReadOptions:
    field: str = "text"  # JSONL: the key holding the text
    column: str = "text"  # Parquet: the column holding the text
    text_unit: str = "file"  # plain text: one document per file, per blank-line paragraph, or per line
    max_docs: int | None = None  # stop after this many documents (None: all)
    # Text or JSONL that is not valid UTF-8 (a Latin-1 file in a folder of documentation): "error" stops and
    # names the file, "skip" leaves the document out (a whole file with text_unit="file"), "replace" decodes
    # it with U+FFFD for each bad byte. Counted in Corpus.bad_files either way.
    on_bad_file: str = "error"

    def __post_init__(self):
        if self.text_unit not in TEXT_UNITS:
            raise DataError(f"unknown text unit {self.text_unit!r}; use one of {', '.join(TEXT_UNITS)}")
        if self.on_bad_file not in BAD_FILE_POLICIES:
            raise DataError(f"--on-bad-file must be one of {', '.join(BAD_FILE_POLICIES)}, got {self.on_bad_file!r}",
                            param="--on-bad-file")
        if self.max_docs is not None and self.max_docs < 1:
            raise DataError(f"--max-docs must be >= 1, got {self.max_docs}")


def file_kind(path: Path, explicit: bool = True) -> str:
    """parquet, jsonl or text by file name. A .json file is JSON lines when named explicitly (as in HF
    datasets) but a text document inside a folder (package.json in a code corpus is text, not records)."""
    name = path.name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(JSONL_SUFFIXES) or (explicit and name.endswith((".json", ".json.gz"))):
        return "jsonl"
    return "text"


@dataclass(frozen=True)
class InputFile:
    path: Path
    kind: str  # text | jsonl | parquet
    explicit: bool  # named on the command line (strict) rather than found in a folder (binary files skipped)
    size: int


def list_files(paths) -> list[InputFile]:
    """Expand input paths: files as given, folders recursively (sorted, hidden entries skipped)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[InputFile] = []
    for p in map(Path, paths):
        if p.is_file():
            out.append(InputFile(p, file_kind(p), True, p.stat().st_size))
        elif p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for f in sorted(files):
                    if not f.startswith("."):
                        fp = Path(root) / f
                        out.append(InputFile(fp, file_kind(fp, False), False, fp.stat().st_size))
        else:
            raise DataError(f"input {p} does not exist; pass text files, folders, .jsonl or .parquet files")
    if not out:
        raise DataError(f"empty corpus: no files under {', '.join(map(str, paths))}")
    return out


class Corpus:
    """The documents of a list of inputs, in order. `bytes_done`/`total_bytes` drive progress bars."""

    def __init__(self, paths, options: ReadOptions | None = None):
        self.options = options or ReadOptions()
        self.files = list_files(paths)
        self.total_bytes = sum(f.size for f in self.files)
        self.bytes_done = 0
        self.skipped: list[Path] = []  # binary files found in folders (a NUL byte near the start): never text
        self.bad_files: list[Path] = []  # files with text that is not UTF-8 (see ReadOptions.on_bad_file)
        self.bad_docs = 0  # documents of those files that were skipped or decoded with replacement
        self.docs_read = 0

    @property
    def text_bytes_bound(self) -> int | None:
        """An upper bound on the UTF-8 bytes of all documents, known before reading: the file sizes when every
        input is plain (uncompressed) text or JSONL; None for gzip and Parquet (compressed). Decoding with
        replacement turns one bad byte into three (U+FFFD)."""
        if any(f.kind == "parquet" or f.path.name.lower().endswith(".gz") for f in self.files):
            return None
        return self.total_bytes * (3 if self.options.on_bad_file == "replace" else 1)

    def documents(self) -> Iterator[str]:
        """Yield every non-empty document. Raises DataError on a bad file or when nothing was found."""
        self.bytes_done, self.docs_read, self.skipped, self.bad_files, self.bad_docs = 0, 0, [], [], 0
        limit = self.options.max_docs
        base = 0
        for f in self.files:
            reader = {"text": self._text, "jsonl": self._jsonl, "parquet": self._parquet}[f.kind]
            for doc, pos in reader(f):
                self.bytes_done = base + min(pos, f.size)
                if doc:
                    self.docs_read += 1
                    yield doc
                    if limit is not None and self.docs_read >= limit:
                        return
            base += f.size
            self.bytes_done = base
        if self.docs_read == 0:
            where = ", ".join(str(f.path) for f in self.files[:3]) + (" ..." if len(self.files) > 3 else "")
            hint = f" ({len(self.skipped)} binary file(s) skipped)" if self.skipped else ""
            if self.bad_files and self.options.on_bad_file == "skip":
                hint += f" ({len(self.bad_files)} file(s) not UTF-8, skipped)"
            raise DataError(f"empty corpus: no documents in {where}{hint}; check the paths and --field/--column")

    # ---- readers: each yields (document, byte position in the file) ------------------------------------
    @staticmethod
    def _open(path: Path) -> tuple[IO[bytes], IO[bytes]]:
        """(raw file, stream): position comes from the raw (compressed) file, lines from the stream."""
        raw = open(path, "rb")
        return raw, (gzip.GzipFile(fileobj=raw) if path.name.lower().endswith(".gz") else raw)

    def _text(self, f: InputFile) -> Iterator[tuple[str, int]]:
        if not f.explicit and not _looks_like_text(f.path):
            self.skipped.append(f.path)
            return
        unit = self.options.text_unit
        raw, stream = self._open(f.path)
        with raw, stream:
            try:
                if unit == "file":
                    yield self._decode(stream.read(), f.path), f.size
                    return
                para: list[bytes] = []
                for line in stream:
                    if unit == "line":
                        yield self._decode(line, f.path).rstrip("\r\n"), raw.tell()
                    elif line.strip():
                        para.append(line)
                    elif para:
                        yield self._decode(b"".join(para), f.path).rstrip("\r\n"), raw.tell()
                        para = []
                if para:
                    yield self._decode(b"".join(para), f.path).rstrip("\r\n"), f.size
            except (OSError, EOFError) as e:  # gzip: truncated or not gzip
                raise DataError(f"cannot read {f.path}: {e}") from None

    def _jsonl(self, f: InputFile) -> Iterator[tuple[str, int]]:
        key = self.options.field
        raw, stream = self._open(f.path)
        with raw, stream:
            try:
                for n, line in enumerate(stream, 1):
                    if not line.strip():
                        continue
                    text = self._decode(line, f.path, f"line {n}").lstrip("\ufeff")  # a UTF-8 BOM is not JSON
                    if not text:
                        continue  # skipped: not UTF-8
                    try:
                        obj = json.loads(text)
                    except (json.JSONDecodeError, UnicodeDecodeError) as e:
                        raise DataError(f"{f.path}:{n}: not valid JSON ({e}); JSONL needs one JSON object "
                                        "per line") from None
                    if not isinstance(obj, dict):
                        raise DataError(f"{f.path}:{n}: expected a JSON object per line, got {type(obj).__name__}")
                    if key not in obj:
                        keys = ", ".join(list(obj)[:10])
                        raise DataError(f"{f.path}:{n}: no field {key!r} (fields: {keys}); choose the text field "
                                        "with --field")
                    val = obj[key]
                    if val is not None and not isinstance(val, str):
                        raise DataError(f"{f.path}:{n}: field {key!r} holds {type(val).__name__}, not text; "
                                        "choose the text field with --field")
                    yield val or "", raw.tell()
            except (OSError, EOFError) as e:
                raise DataError(f"cannot read {f.path}: {e}") from None

    def _parquet(self, f: InputFile) -> Iterator[tuple[str, int]]:
        # imported on use: only Parquet inputs need pyarrow, and its ~40 ms would be paid by `nanoseek --help`
        import pyarrow as pa
        import pyarrow.parquet as pq

        col = self.options.column
        try:
            pf = pq.ParquetFile(f.path)
            schema = pf.schema_arrow
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"cannot read Parquet file {f.path}: {e}; it is corrupt or not Parquet") from None
        if col not in schema.names:
            raise DataError(f"{f.path}: no column {col!r} (columns: {', '.join(schema.names[:20])}); choose the "
                            "text column with --column")
        typ = schema.field(col).type
        if not (pa.types.is_string(typ) or pa.types.is_large_string(typ)
                or getattr(pa.types, "is_string_view", lambda t: False)(typ)):
            raise DataError(f"{f.path}: column {col!r} has type {typ}, not text; choose the text column with --column")
        total_rows = max(pf.metadata.num_rows, 1)
        rows = 0
        batches = pf.iter_batches(batch_size=1024, columns=[col])  # decodes one row group at a time
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except (pa.ArrowException, OSError) as e:
                raise DataError(f"cannot read Parquet file {f.path}: {e}; it is corrupt or truncated") from None
            values = batch.column(0).to_pylist()
            for i, v in enumerate(values):
                yield v or "", f.size * (rows + i + 1) // total_rows
            rows += len(values)

    def _decode(self, b: bytes, path: Path, where: str = "") -> str:
        """UTF-8 text of one document; "" (an empty document: left out) when it is not UTF-8 and the policy is
        skip."""
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError as e:
            policy = self.options.on_bad_file
            if policy == "error":
                at = f"{where}, byte {e.start}" if where else f"byte {e.start}"
                raise DataError(
                    f"{path} is not UTF-8 text ({e.reason}: 0x{b[e.start]:02x} at {at}); pass --on-bad-file skip "
                    "to leave such files out or --on-bad-file replace to decode them with U+FFFD for each bad "
                    "byte, or convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8)", param="--on-bad-file") from None
            if not self.bad_files or self.bad_files[-1] != path:
                self.bad_files.append(path)
            self.bad_docs += 1
            return "" if policy == "skip" else b.decode("utf-8", errors="replace")


def _looks_like_text(path: Path) -> bool:
    """Folder scans skip binary files: a NUL byte in the first 8 KB. (Text in another encoding is text: the
    on_bad_file policy decides about it, so a Latin-1 file is never dropped without a word.)"""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(_SNIFF)
    except (OSError, EOFError):
        return False
    return b"\x00" not in head
