#!/usr/bin/env python3
"""Adds a sequence column to the FuxiCTR harness's generated splits, for DIN in the CTR bench.

`click_history`: a row's earlier clicked ads, tokens of the `--target` field joined by `^`
(FuxiCTR's default splitter), 1 to `--max-len` of them, drawn from the split's own values of
that field. A clicked row holds its own ad with probability 0.6, another row with 0.05, so
attention over the history has something to find. Seeded per split (numpy PCG64): the same
files give the same column. Each `{train,valid,test}.parquet` in `--data` is rewritten with the
column appended; the other columns are unchanged.

Usage: add_history.py --data DIR [--target C14] [--max-len 20] [--seed 2024]
"""
import argparse
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ap = argparse.ArgumentParser()
ap.add_argument("--data", required=True)
ap.add_argument("--target", default="C14")
ap.add_argument("--max-len", type=int, default=20)
ap.add_argument("--seed", type=int, default=2024)
args = ap.parse_args()

for i, split in enumerate(["train", "valid", "test"]):
    path = os.path.join(args.data, f"{split}.parquet")
    table = pq.read_table(path)
    if "click_history" in table.column_names:
        continue
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([args.seed, 0x5E0, i])))
    own = table.column(args.target).to_pylist()
    clicked = np.asarray(table.column("click").to_numpy(zero_copy_only=False)) > 0.5
    pool = np.array([t for t in own if t is not None], dtype=object)
    n = len(own)
    lengths = rng.integers(1, args.max_len + 1, n)
    picks = pool[rng.integers(0, len(pool), (n, args.max_len))]
    holds = rng.random(n) < np.where(clicked, 0.6, 0.05)
    slot = rng.integers(0, args.max_len, n) % lengths
    history = []
    for r in range(n):
        tokens = list(picks[r, : lengths[r]])
        if holds[r] and own[r] is not None:
            tokens[slot[r]] = own[r]
        history.append("^".join(tokens))
    table = table.append_column("click_history", pa.array(history, type=pa.string()))
    pq.write_table(table, path + ".tmp")
    os.replace(path + ".tmp", path)
    print(f"{path}: click_history over {args.target}, {n} rows")
