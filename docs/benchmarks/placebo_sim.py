"""How often does a sweep crown noise when `between_job_cv` understates the drift between jobs, with and
without points that repeat the baseline's configuration (the noise check)? A CPU simulation over the product's own
`sweep_decision`: 15 points with no real gain, 3 windows each (0.2 % noise inside a job), every job drifting by
a log-normal factor of the given spread, the allowance configured at 0.01 (the cluster default).

    PYTHONPATH=scripts:tests .venv/bin/python docs/benchmarks/placebo_sim.py   (the sweeps of tests/test_measure.py)

2026-12-08, 300 sweeps per row: true drift 1 %: 0 % false winners with 0, 1 or 2 placebos; 3 %: 41.7 % / 14.3 %
/ 12.0 %; 5 %: 66.0 % / 21.7 % / 10.7 %. The check narrows the gap but does not close it: the winner's own
validation (paired windows in one job, immune to drift between jobs) is what a recommendation must pass.
"""

import random

from test_measure import simulated_sweep
from virnucpro.report.significance import sweep_decision

rng = random.Random(1)
for drift in (0.01, 0.03, 0.05):
    for placebos in (0, 1, 2):
        n = 300
        wins = sum(
            sweep_decision(simulated_sweep(rng, 0.002, job_sd=drift, placebos=placebos), 0.9, between_job_cv=0.01)[
                "significant"
            ]
            for _ in range(n)
        )
        print(f"true drift {drift:.0%}, cv 0.01, placebos {placebos}: false winners {wins / n:.1%}")
