"""Held-out pretext metrics of a run's pretraining checkpoints (for runs made before notebooks 02-03 reported them).

For each pretraining stage of RUN (02_stage1, 03_stage2, and every objective compared in
03_stage2/objectives/), the trained network beside its random initialisation on crops the training
loop never drew (kit.ssl.pretext). Writes OUT (default RUN/pretext_metrics.csv)::

    python benchmarks/pretext_metrics.py --run runs/study --profile study --out benchmarks/results/study/pretext_metrics.csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kit.data.cache import open_cache  # noqa: E402
from kit.pipeline import profile_config  # noqa: E402
from kit.ssl.pretext import pretext_table  # noqa: E402
from kit.train.sampling import ArrayCropDataset  # noqa: E402


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--profile", required=True)
    parser.add_argument("--crops", type=int, default=64, help="held-out crops per checkpoint")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    config = profile_config(args.profile)
    rows = []
    for folder, key in (("02_stage1", "stage1"), ("03_stage2", "stage2")):
        stage = config[key]
        dataset = ArrayCropDataset(open_cache(args.run / folder / "cache").images(), stage["crop"])
        checkpoints = {stage["objective"]: args.run / folder / "checkpoint.pt"}
        checkpoints.update({p.parent.name: p for p in sorted((args.run / folder / "objectives").glob("*/checkpoint.pt"))})
        for objective, checkpoint in checkpoints.items():
            for row in pretext_table(checkpoint, dataset, n_crops=args.crops, batch_size=stage["batch_size"], seed=args.seed):
                rows.append({"stage": folder, "objective": objective, **row})
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    out = args.out or args.run / "pretext_metrics.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    return table


if __name__ == "__main__":
    main()
