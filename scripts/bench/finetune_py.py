"""Reference fits for `node scripts/bench/run.js finetune`: Python xgboost (hist) and
LightGBM, one thread each, on the bundled data split the way the bench splits it (first
3,200 rows to train, last 800 to test). Prints one JSON object. Run by the bench inside its
own venv (.bench-venv/, git-ignored); never part of npm test."""
import json
import sys
import time

import numpy as np

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
X = np.array([r["features"] for r in rows], dtype=np.float64)
y = np.array([r["quality"] for r in rows], dtype=np.float64)
Xtr, ytr, Xte, yte = X[:3200], y[:3200], X[3200:], y[3200:]
out = {}


def score(name, fit, predict, reps=5):
    times, cpu = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        model = fit()
        times.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    p = predict(model)
    mse = float(np.mean((p - yte) ** 2))
    r2 = 1 - mse / float(np.var(yte))
    # CPU time as well: on a shared machine wall time also counts waiting for a core.
    out[name] = {"ms": sorted(times)[len(times) // 2], "cpuMs": min(cpu), "mse": mse, "r2": r2}


try:
    import xgboost as xgb

    params = dict(max_depth=4, eta=0.1, tree_method="hist", nthread=1, objective="reg:squarederror")
    # Dataset construction (binning) is part of the fit, as it is in ours.
    score("xgboost", lambda: xgb.train(params, xgb.DMatrix(Xtr, label=ytr, nthread=1), num_boost_round=200),
          lambda m: m.predict(xgb.DMatrix(Xte)))
    out["xgboost"]["version"] = xgb.__version__
except Exception as e:  # noqa: BLE001 - report, do not fail the bench
    out["xgboost"] = {"error": str(e)}
try:
    import lightgbm as lgb

    params = dict(objective="regression", num_leaves=15, learning_rate=0.1, num_threads=1, verbose=-1)
    score("lightgbm", lambda: lgb.train(params, lgb.Dataset(Xtr, label=ytr), num_boost_round=200),
          lambda m: m.predict(Xte))
    out["lightgbm"]["version"] = lgb.__version__
except Exception as e:  # noqa: BLE001
    out["lightgbm"] = {"error": str(e)}
print(json.dumps(out))
