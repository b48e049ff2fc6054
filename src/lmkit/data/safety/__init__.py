"""Content safety on text: moderation rules and a trained classifier, prompt-injection
detection, and an invisible zero-width text watermark.

* `rules`                word lists and regexes per category, Chinese-aware matching
* `classifier`           character n-gram naive Bayes, trained here on a labelled set
* `moderation`           rules + classifier -> flagged categories, configurable
* `prompt_injection`     instructions planted in retrieved documents or tool results
* `invisible_watermark`  a payload in zero-width characters (embed / extract / strip)

They sit in `data/` with the cleaning filters (the PII masker, the language identifier):
plain text in, a verdict out, no model needed; serve/, rag/ and agent/ apply them.
"""
