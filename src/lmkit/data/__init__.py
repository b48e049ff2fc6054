"""Pretraining data: cleaning, deduplication and decontamination, augmentation and mixtures,
corpus -> token shards, the objectives' batches.

* `clean`           readers -> `filters` -> writers, shard by shard, resumable, drop counts per filter
* `filters`         Unicode, boilerplate, language ID, Gopher quality/repetition, C4 lines, PII masking
* `augment`, `paraphrase`, `synonyms`: EDA and model-based paraphrases for fine-tuning data
* `balance`, `mixture`: over/under-sampling, class weights, temperature-sampled mixtures (Trainer input)
* `datasheet`       per-dataset datasheet (Markdown + JSON)
* `dedup`           exact (normalised-text hash, document/paragraph) and MinHash-LSH near-duplicate removal
* `decontaminate`   evaluation items in training data: 13-gram overlap, shingle containment, MinHash
* `shingles`, `minhash`, `lsh`, `union_find`, `records`: the pieces both are built from
* `shards`          corpus files -> memmap token shards (`prepare_shards`, `TokenShards`)
* `packing`         causal LM: packed fixed-length windows, resumable/sharded `PackedLoader`
* `mlm`             BERT: masked LM (80/10/10) and next-sentence pairs (`MLMCollator`)
* `span_corruption` T5: random spans -> sentinels (`SpanCorruptionCollator`)
* `prefix_lm`       prefix LM: bidirectional prefix, loss on the target (`PrefixLMCollator`)
"""

from lmkit.data.augment import EDAConfig, EDAugmenter
from lmkit.data.balance import balanced_sampler, class_weights, resample
from lmkit.data.clean import CleanPipeline, CleanStats
from lmkit.data.datasheet import build_datasheet, write_datasheet
from lmkit.data.decontaminate import DecontamConfig, Decontaminator, decontaminate
from lmkit.data.dedup import DedupConfig, ExactDeduplicator, dedup_texts, deduplicate, near_duplicates
from lmkit.data.mixture import MixtureDataset, temperature_weights
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
    "CleanPipeline",
    "CleanStats",
    "CorpusError",
    "EDAConfig",
    "EDAugmenter",
    "MixtureDataset",
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
    "balanced_sampler",
    "build_datasheet",
    "build_nsp_examples",
    "class_weights",
    "corrupt_spans",
    "decontaminate",
    "dedup_texts",
    "deduplicate",
    "iter_documents",
    "mask_tokens",
    "near_duplicates",
    "prepare_shards",
    "random_spans_noise_mask",
    "resample",
    "stack_collate",
    "temperature_weights",
    "write_datasheet",
]
