"""Series made to order and Apache Otava's change points in them, for rallyctl's peer test
(tests/changepoints.rs), run in the venv tests/setup-env.sh makes.

stdin: {"window_len": N, "max_pvalue": P, "min_magnitude": M,
        "series": [{"seed": S, "noise": F, "pieces": [[points, from, to], ...]}, ...]}
A piece is `points` values going linearly from `from` to `to` (a level when they are equal), each
times 1 + F * a standard normal draw of `random.Random(S)`.
stdout: one {"series": [...], "change_points": [{"index", "mean_before", "mean_after",
"pvalue"}, ...]} per series, each value of the series as the 64 bits of its IEEE double, so
that both sides see the very same numbers (a decimal might come back one bit off).

Each series is handed to Otava as a Python list, as its own `Series` does: given a numpy array,
`ChangePointDetector` does not cut the window out of it.
"""

import json
import random
import struct
import sys

from otava.analysis import compute_change_points


def make(spec):
    rng = random.Random(spec["seed"])
    values = []
    for points, start, end in spec["pieces"]:
        for k in range(points):
            level = start + (end - start) * k / max(points - 1, 1)
            values.append(level * (1.0 + spec["noise"] * rng.gauss(0.0, 1.0)))
    return values


def main():
    job = json.load(sys.stdin)
    answers = []
    for spec in job["series"]:
        series = make(spec)
        found, _weak = compute_change_points(
            list(series),
            window_len=job["window_len"],
            max_pvalue=job["max_pvalue"],
            min_magnitude=job["min_magnitude"],
        )
        answers.append(
            {
                "series": [struct.unpack("<Q", struct.pack("<d", x))[0] for x in series],
                "change_points": [
                    {
                        "index": int(c.index),
                        "mean_before": float(c.stats.mean_1),
                        "mean_after": float(c.stats.mean_2),
                        "pvalue": float(c.stats.pvalue),
                    }
                    for c in found
                ],
            }
        )
    json.dump(answers, sys.stdout)


if __name__ == "__main__":
    main()
