import sys, time
from pathlib import Path
from kit.data.cache import build_cache
from kit.data.cohorts import load_cohort
from kit.profiles import profile_config
from kit.finetune.study import run_study
if __name__ == "__main__":
    run = Path(sys.argv[4])
    config = profile_config("study")["finetune"]
    entries, meta = load_cohort(run / "01_curation" / "datalist.json", "tumor")
    mods = [meta["modality"][str(i)] for i in range(len(meta["modality"]))]
    cache = build_cache(entries, mods, run / "04_finetune" / "cache_tumor", with_labels=True)
    spec = [t for t in config["tasks"] if t["name"] == "tumor_present"][0]
    over = eval(sys.argv[2])
    spec = {**spec, "val_size": over.pop("val_size", config["val_size"]), "config": {**spec["config"], **over}}
    seeds = [int(s) for s in sys.argv[3].split(",")]
    t = time.time()
    res = run_study({"tumor": cache}, [spec], {"scratch": "scratch"}, [1.0], seeds, config["config"], Path(sys.argv[1]),
                    test_fraction=config["test_fraction"], device="cpu", val_size=config["val_size"], leakage="flag", workers=2)
    print(res[["seed", "auc", "accuracy", "best_step", "steps_run", "n_train", "n_val", "n_test", "train_s"]].to_string(), time.time() - t)
