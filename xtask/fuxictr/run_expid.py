#!/usr/bin/env python3
"""FuxiCTR's side of `cargo xtask bench ctr --baseline fuxictr`.

Runs one experiment of a FuxiCTR configuration folder the way FuxiCTR's own `run_expid.py`
does (load_config -> FeatureProcessor -> build_dataset -> FeatureMap -> model -> fit ->
evaluate -> predict), on the CPU, with timers wrapped around FuxiCTR's methods (no change to
what they do). Ferry's side reads the same configuration folder with its FuxiCTR reader, so
both sides train the same model on the same files with the same settings.

The model classes come from FuxiCTR's `model_zoo/` (the PyPI wheel does not ship them):
`--model-zoo DIR`.

Figures written to `--out-json` (keys shared with the FuxiCTR baseline harness's run_bench.py):
  train_samples_per_s      training rows / time in train_epoch, the end-of-epoch validation
                           taken out (data loading and shuffling counted)
  predict_rows_per_s       model.predict over the test split (its data loader counted)
  forward_only_rows_per_s  forward() over test batches already in memory
  valid_metrics, test_metrics, preprocess_s, peak_rss_mb (this process), ...

Usage: run_expid.py --config DIR --expid ID --model-zoo DIR --out-json FILE
(relative data paths in the configuration resolve against the working directory).
"""
import argparse
import json
import logging
import os
import platform
import resource
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--config", required=True)
ap.add_argument("--expid", required=True)
ap.add_argument("--model-zoo", required=True)
ap.add_argument("--out-json", required=True)
args = ap.parse_args()

import torch  # noqa: E402
import fuxictr  # noqa: E402
from fuxictr.utils import load_config, set_logger, print_to_json  # noqa: E402
from fuxictr.features import FeatureMap  # noqa: E402
from fuxictr.pytorch.dataloaders import RankDataLoader  # noqa: E402
from fuxictr.pytorch.torch_utils import seed_everything  # noqa: E402
from fuxictr.preprocess import FeatureProcessor, build_dataset  # noqa: E402

# Where each model's class lives in FuxiCTR's model_zoo (its `src` package).
ZOO = {
    "LR": "LR", "FM": "FM", "DNN": "DNN/DNN_torch", "WideDeep": "WideDeep/WideDeep_torch",
    "DeepFM": "DeepFM/DeepFM_torch", "PNN": "PNN", "DCN": "DCN/DCN_torch", "DCNv2": "DCNv2",
    "xDeepFM": "xDeepFM", "AutoInt": "AutoInt", "FiBiNET": "FiBiNET", "FinalMLP": "FinalMLP",
    "DIN": "DIN", "MMoE": "multitask/MMoE", "ShareBottom": "multitask/ShareBottom",
    "PLE": "multitask/PLE",
}

params = load_config(args.config, args.expid)
params["gpu"] = -1
model_name = params["model"]
if model_name not in ZOO:
    sys.exit(f"run_expid.py: no model_zoo entry for {model_name}")
sys.path.insert(0, os.path.join(args.model_zoo, ZOO[model_name]))
import src as zoo  # noqa: E402

Model = getattr(zoo, model_name)

R = {"model": model_name, "expid": args.expid, "fuxictr": fuxictr.__version__,
     "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
     "python": platform.python_version(), "cpu_count": os.cpu_count()}

set_logger(params)
logging.info("Params: " + print_to_json(params))
seed_everything(seed=params["seed"])
data_dir = os.path.join(params["data_root"], params["dataset_id"])

t0 = time.perf_counter()
feature_encoder = FeatureProcessor(**params)
params["train_data"], params["valid_data"], params["test_data"] = build_dataset(feature_encoder, **params)
R["preprocess_s"] = time.perf_counter() - t0

feature_map = FeatureMap(params["dataset_id"], data_dir)
feature_map.load(os.path.join(data_dir, "feature_map.json"), params)
model = Model(feature_map, **params)
R["n_params"] = int(sum(p.numel() for p in model.parameters() if p.requires_grad))

train_gen, valid_gen = RankDataLoader(feature_map, stage="train", **params)
R["n_train"] = train_gen.num_samples

timers = {"train_epoch_s": 0.0, "eval_step_s": 0.0}
train_epoch, eval_step = model.train_epoch, model.eval_step


def timed_train_epoch(gen):
    t = time.perf_counter()
    out = train_epoch(gen)
    timers["train_epoch_s"] += time.perf_counter() - t
    return out


def timed_eval_step():
    t = time.perf_counter()
    out = eval_step()
    timers["eval_step_s"] += time.perf_counter() - t
    return out


model.train_epoch, model.eval_step = timed_train_epoch, timed_eval_step
t0 = time.perf_counter()
model.fit(train_gen, validation_data=valid_gen, **params)
R["fit_total_s"] = time.perf_counter() - t0
R["train_epoch_s"] = timers["train_epoch_s"] - timers["eval_step_s"]
R["train_samples_per_s"] = R["n_train"] * params["epochs"] / R["train_epoch_s"]

R["valid_metrics"] = {k: float(v) for k, v in model.evaluate(valid_gen).items()}
test_gen = RankDataLoader(feature_map, stage="test", **params)
t0 = time.perf_counter()
pred = model.predict(test_gen)
R["predict_s"] = time.perf_counter() - t0
rows = len(next(iter(pred.values()))) if isinstance(pred, dict) else len(pred)
R["predict_rows_per_s"] = rows / R["predict_s"]
R["test_metrics"] = {k: float(v) for k, v in model.evaluate(test_gen).items()}

batches = list(test_gen)
model.eval()
with torch.no_grad():
    model.forward(batches[0])  # warm-up
    t0 = time.perf_counter()
    n = 0
    for b in batches:
        n += next(iter(model.forward(b).values())).shape[0]
    R["forward_only_rows_per_s"] = n / (time.perf_counter() - t0)
R["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

with open(args.out_json, "w") as f:
    json.dump(R, f, indent=2)
print(json.dumps(R, indent=1))
try:
    import ray
    ray.shutdown()
except Exception:
    pass
