"""Pretraining data: deduplication and decontamination, corpus -> token shards, the objectives' batches.

* `dedup`           exact (normalised-text hash, document/paragraph) and MinHash-LSH near-duplicate removal
* `decontaminate`   evaluation items in training data: 13-gram overlap, shingle containment, MinHash
* `shingles`, `minhash`, `lsh`, `union_find`, `records`: the pieces both are built from
* `shards`          corpus files -> memmap token shards (`prepare_shards`, `TokenShards`)
* `packing`         causal LM: packed fixed-length windows, resumable/sharded `PackedLoader`
* `mlm`             BERT: masked LM (80/10/10) and next-sentence pairs (`MLMCollator`)
* `span_corruption` T5: random spans -> sentinels (`SpanCorruptionCollator`)
* `prefix_lm`       prefix LM: bidirectional prefix, loss on the target (`PrefixLMCollator`)
"""

from lmkit.data.decontaminate import DecontamConfig, Decontaminator, decontaminate
from lmkit.data.dedup import DedupConfig, ExactDeduplicator, dedup_texts, deduplicate, near_duplicates
from lmkit.data.mlm import MaskingConfig, MLMCollator, NSPExample, build_nsp_examples, mask_tokens
from lmkit.data.packing import PackedDataset, PackedLoader, ResumableSampler, stack_collate
from lmkit.data.prefix_lm import PrefixLMCollator
from lmkit.data.shards import CorpusError, ShardConfig, TokenShards, iter_documents, prepare_shards
from lmkit.data.span_corruption import (
    SpanCorruptionCollator,
    SpanCorruptionConfig,
    corrupt_spans,
    random_spans_noise_mask,
)

__all__ = [
    "CorpusError",
    "DecontamConfig",
    "Decontaminator",
    "DedupConfig",
    "ExactDeduplicator",
    "MLMCollator",
    "MaskingConfig",
    "NSPExample",
    "PackedDataset",
    "PackedLoader",
    "PrefixLMCollator",
    "ResumableSampler",
    "ShardConfig",
    "SpanCorruptionCollator",
    "SpanCorruptionConfig",
    "TokenShards",
    "build_nsp_examples",
    "corrupt_spans",
    "decontaminate",
    "dedup_texts",
    "deduplicate",
    "iter_documents",
    "mask_tokens",
    "near_duplicates",
    "prepare_shards",
    "random_spans_noise_mask",
    "stack_collate",
]
