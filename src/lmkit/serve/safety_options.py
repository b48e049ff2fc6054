"""`lmkit serve`'s safety options: moderation and per-key rate limits, as one decorator.

The command receives `moderation` (a ModerationConfig or None) and `rate_limits` (a
RateLimitConfig or None), ready for `create_app`.
"""

from __future__ import annotations

import functools

import click


def safety_options(command):
    options = [
        click.option("--moderation", "mod_on", is_flag=True,
                     help="Moderate prompts (400 content_filter) and replies (finish_reason content_filter, "
                          "streams cut mid-way): rules + a trained classifier; see docs/safety.md."),
        click.option("--moderation-config", "mod_file", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="A JSON ModerationConfig (categories, check_input/check_output, threshold, rules_file...); "
                          "implies --moderation."),
        click.option("--moderation-categories", "mod_categories", default=None,
                     help="Comma-separated categories to flag (default: violence,self_harm,hate,sexual,pii)."),
        click.option("--moderation-threshold", "mod_threshold", type=click.FloatRange(0, 1, min_open=True),
                     default=None, help="Classifier probability needed to flag (default 0.9)."),
        click.option("--rate-limit-rpm", "rl_rpm", type=click.FloatRange(0, min_open=True), default=None,
                     help="Requests per minute per API key (token bucket; 429 with Retry-After)."),
        click.option("--rate-limit-tpm", "rl_tpm", type=click.FloatRange(0, min_open=True), default=None,
                     help="Tokens (prompt + generated) per minute per API key."),
        click.option("--token-quota", "rl_quota", type=click.IntRange(1), default=None,
                     help="Total tokens per API key while the server runs (then 429 insufficient_quota)."),
        click.option("--rate-limits", "rl_file", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="A JSON file of limits with per-key overrides (see docs/safety.md)."),
    ]

    @functools.wraps(command)
    def wrapped(*args, mod_on, mod_file, mod_categories, mod_threshold, rl_rpm, rl_tpm, rl_quota, rl_file, **kwargs):
        from lmkit.data.safety.moderation import ModerationConfig
        from lmkit.serve.rate_limit import RateLimitConfig

        moderation = None
        if mod_on or mod_file or mod_categories or mod_threshold:
            moderation = ModerationConfig.from_file(mod_file) if mod_file else ModerationConfig()
            if mod_categories:
                moderation.categories = [c.strip() for c in mod_categories.split(",") if c.strip()]
            if mod_threshold:
                moderation.threshold = float(mod_threshold)
        limits = RateLimitConfig.from_file(rl_file) if rl_file else RateLimitConfig()
        for name, value in (("requests_per_minute", rl_rpm), ("tokens_per_minute", rl_tpm), ("token_quota", rl_quota)):
            if value is not None:
                setattr(limits, name, value)
        limits.__post_init__()
        return command(*args, moderation=moderation, rate_limits=limits if limits.active else None, **kwargs)

    for option in reversed(options):
        wrapped = option(wrapped)
    return wrapped
