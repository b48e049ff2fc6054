"""lmkit.eval — evaluation: perplexity (sliding window, bits per byte), classification metrics,
BLEU/ROUGE/EM/F1, multiple-choice log-likelihood scoring, hallucination measures, adversarial
attacks on classifiers (adversarial_attack.py); `lmkit eval`."""

from lmkit.eval.classification import accuracy, confusion_matrix, f1_score, precision_recall_f1, roc_auc, roc_curve
from lmkit.eval.hallucination import cloze_questions, extract_entities, extract_numbers, fact_overlap, qa_consistency
from lmkit.eval.multiple_choice import LMScorer, MCExample, evaluate_mc, load_task
from lmkit.eval.perplexity import PerplexityReport, perplexity, sliding_window_nll, text_perplexity
from lmkit.eval.text_metrics import bleu, bleu_from_tokens, exact_match, normalize_answer, rouge, squad_scores, token_f1

__all__ = [
    "LMScorer", "MCExample", "PerplexityReport", "accuracy", "bleu", "bleu_from_tokens", "cloze_questions",
    "confusion_matrix", "evaluate_mc", "exact_match", "extract_entities", "extract_numbers", "f1_score",
    "fact_overlap", "load_task", "normalize_answer", "perplexity", "precision_recall_f1", "qa_consistency", "roc_auc",
    "roc_curve", "rouge", "sliding_window_nll", "squad_scores", "text_perplexity", "token_f1",
]
