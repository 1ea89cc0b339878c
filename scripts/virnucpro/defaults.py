"""Numbers that the CLI, telemetry, the report and its templates share, defined once here.

The workflow's config (config/config.yaml, workflow/schemas) states the same defaults for its users; these are
what the package falls back on when a caller gives none. BOS/EOS per sequence is `data.packing.SPECIAL_TOKENS`.
"""

#: The sequence count runtime projections (PERF-01) are for: a production run of the upstream pipeline.
TARGET_SEQUENCES = 6_000_000
#: Tokens per sequence of the production input: ~150-bp reads, six-frame translated (~49 aa) + BOS/EOS.
TARGET_TOKENS_PER_SEQUENCE = 51.0
#: Warm-up excluded from a run's steady state: the larger of the first this-many seconds or batches.
WARMUP_SECONDS = 60.0
WARMUP_BATCHES = 20
#: A run keeping fewer steady batches than this on any rank is marked invalid.
MIN_STEADY_BATCHES = 20
#: The accuracy gate a precision must pass to be recommended: per-sequence cosine similarity of the pooled
#: embedding with fair-esm fp32 on the same weights of at least COSINE_GATE, for at least GATE_FRACTION of them.
COSINE_GATE = 0.999
GATE_FRACTION = 0.99
ACCURACY_GATE = f"cosine >= {COSINE_GATE} for >= {100 * GATE_FRACTION:.0f} % of sequences"
