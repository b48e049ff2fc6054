"""Exceptions users see. Each message says what was wrong and what to do."""


class LmkitError(Exception):
    """Base class for every error lmkit raises on purpose."""


class ConfigError(LmkitError, ValueError):
    """A configuration value is invalid or contradicts another."""


class CheckpointError(LmkitError):
    """A checkpoint is missing, corrupt, or does not fit the model."""


class TokenizerError(LmkitError, ValueError):
    """A tokenizer file or tokenizer input is invalid."""


class MissingDependencyError(LmkitError, ImportError):
    """An optional dependency is needed; the message names the extra to install."""


def require(module: str, extra: str):
    """Import an optional dependency or raise a message naming the pip extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on environment
        raise MissingDependencyError(
            f"{module!r} is needed for this feature: pip install 'lmkit[{extra}]'"
        ) from exc


class QuantizationError(LmkitError, ValueError):
    """A weight or setting that a quantization method cannot represent (shapes, group sizes, bits)."""
