import sys, time, torch
torch.set_num_threads(1)
from pathlib import Path
from kit.data.cache import build_cache
from kit.data.cohorts import load_cohort
from kit.profiles import profile_config
from kit.finetune.study import run_study
run = Path(sys.argv[5] if len(sys.argv) > 5 else "runs/study")
config = profile_config("study")["finetune"]
entries, meta = load_cohort(run / "01_curation" / "datalist.json", "tumor")
mods = [meta["modality"][str(i)] for i in range(len(meta["modality"]))]
cache = build_cache(entries, mods, run / "04_finetune" / "cache_tumor", with_labels=True)
spec = [t for t in config["tasks"] if t["name"] == "tumor_present"][0]
spec = {**spec, "config": {**spec["config"], **eval(sys.argv[2])}}
seeds = [int(s) for s in sys.argv[3].split(",")]
t = time.time()
res = run_study({"tumor": cache}, [spec], {"scratch": "scratch"}, [1.0], seeds, config["config"], Path(sys.argv[1]),
                test_fraction=config["test_fraction"], regions={"tumor": meta.get("regions")},
                label_values={"tumor": sorted(int(v) for v in meta["labels"])}, device="cpu",
                val_size=config["val_size"], leakage="flag")
print(res[["seed", "auc", "accuracy", "best_step", "steps_run", "n_train", "n_val", "n_test", "train_s"]].to_string(), time.time() - t)
