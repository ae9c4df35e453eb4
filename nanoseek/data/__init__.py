"""Corpora -> token shards -> packed batches (see shards.py for the on-disk format)."""

from nanoseek.errors import DataError
from nanoseek.data.loader import PackedLoader
from nanoseek.data.prepare import prepare
from nanoseek.data.shards import open_split, read_manifest, token_dtype
from nanoseek.data.sources import Corpus, ReadOptions

__all__ = ["DataError", "PackedLoader", "prepare", "open_split", "read_manifest", "token_dtype", "Corpus",
           "ReadOptions"]
