"""VirNucPro performance engine: packed ESM-2 embedding with telemetry."""

__version__ = "0.1.0"
