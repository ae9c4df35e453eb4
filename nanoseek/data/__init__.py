"""Data: corpora -> token shards -> packed batches for pretraining (sources reads corpora, prepare tokenizes
them, shards is the on-disk format, loader packs the batches), chat conversations for SFT (chat), and the
verifiable tasks with their checkers and worked solutions (tasks/). The rewards that score RL rollouts
against those checkers are nanoseek.train.rewards."""

from nanoseek.errors import DataError
from nanoseek.data.loader import PackedLoader
from nanoseek.data.prepare import prepare
from nanoseek.data.shards import open_split, read_manifest, token_dtype
from nanoseek.data.sources import Corpus, ReadOptions

__all__ = ["DataError", "PackedLoader", "prepare", "open_split", "read_manifest", "token_dtype", "Corpus",
           "ReadOptions"]
