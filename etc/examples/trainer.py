#!/usr/bin/env python3
"""Example cis490 trainer: standard library only, so it runs on a fresh machine.

It follows the trainer contract (README, "Trainer contract"): the job's hyperparameters
arrive as ``--key value`` arguments, the job's identity in CIS490_* environment variables,
and whatever it leaves in CIS490_OUTPUT_DIR when it exits 0 is the artifact. Its final
metrics go to CIS490_OUTPUT_DIR/metrics.json (a flat object of numbers and strings, which
``cis490ctl results`` ranks), and one JSON line per boosting round or epoch is appended to
CIS490_PROGRESS_FILE (``cis490ctl get jobs`` shows the latest as PROGRESS).

Models (CIS490_MODEL):
  gbt  gradient-boosted regression trees of depth max_depth (squared loss)
  mlp  a one-hidden-layer network (tanh) trained by mini-batch SGD

Both learn a synthetic binary-classification task whose data set is chosen by the
job's split_recipe and seed, so every job is reproducible. Mode ``oracle`` gives the
model the noise-free features; ``realistic`` adds measurement noise.
"""

import argparse
import json
import math
import os
import random
import sys
import time


class Progress:
    """Appends one JSON line per step to $CIS490_PROGRESS_FILE (nothing when unset)."""

    def __init__(self, total):
        self.path = os.environ.get("CIS490_PROGRESS_FILE")
        self.total = total
        # The contract is only a file: a trainer may also slow itself down for a demo.
        self.pause = float(os.environ.get("TRAINER_STEP_SECONDS", "0") or 0)

    def step(self, n, **values):
        if self.path:
            line = {"step": n, "of": self.total, **values}
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
        if self.pause > 0:
            time.sleep(self.pause)


def fail(message):
    """A clear one-line error on stderr and a non-zero exit: the agent reports it."""
    print(f"trainer: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def make_dataset(seed, split_recipe, mode, n=600, dims=4):
    rng = random.Random(f"{seed}:{split_recipe}")
    weights = [rng.uniform(-2, 2) for _ in range(dims)]
    noise = 0.0 if mode == "oracle" else 0.6
    rows = []
    for _ in range(n):
        x = [rng.uniform(-1, 1) for _ in range(dims)]
        # A non-linear boundary so both models have something to learn.
        score = sum(w * v for w, v in zip(weights, x)) + 0.8 * x[0] * x[1]
        y = 1.0 if score > 0 else 0.0
        observed = [v + rng.gauss(0, noise) for v in x]
        rows.append((observed, y))
    # "holdout-<percent>" sets the test share; any other recipe name (by_subject, ...) only
    # selects the data set through the random seed above and keeps a 20% holdout.
    train_fraction = 0.8
    if split_recipe and split_recipe.startswith("holdout-"):
        try:
            train_fraction = 1 - int(split_recipe.split("-", 1)[1]) / 100
        except ValueError:
            fail(f"split_recipe {split_recipe!r}: expected holdout-<percent>")
        if not (0 < train_fraction < 1):
            fail(f"split_recipe {split_recipe!r}: the percent must be between 1 and 99")
    cut = int(len(rows) * train_fraction)
    return rows[:cut], rows[cut:]


def accuracy(predict, rows):
    if not rows:
        return 0.0
    return sum((predict(x) > 0.5) == (y > 0.5) for x, y in rows) / len(rows)


def fit_tree(rows, residuals, depth, dims):
    """A regression tree of the given depth on (x, residual) pairs, as nested dicts."""
    mean = sum(residuals) / len(residuals)
    if depth == 0 or len(rows) < 4:
        return {"value": mean}
    best = None
    for d in range(dims):
        values = sorted({round(x[d], 2) for x in rows})
        for threshold in values[:: max(1, len(values) // 16)]:
            left = [r for x, r in zip(rows, residuals) if x[d] <= threshold]
            right = [r for x, r in zip(rows, residuals) if x[d] > threshold]
            if not left or not right:
                continue
            lv, rv = sum(left) / len(left), sum(right) / len(right)
            err = sum((r - lv) ** 2 for r in left) + sum((r - rv) ** 2 for r in right)
            if best is None or err < best[0]:
                best = (err, d, threshold)
    if best is None:
        return {"value": mean}
    _, d, threshold = best
    left = [(x, r) for x, r in zip(rows, residuals) if x[d] <= threshold]
    right = [(x, r) for x, r in zip(rows, residuals) if x[d] > threshold]
    return {
        "feature": d,
        "threshold": threshold,
        "left": fit_tree([x for x, _ in left], [r for _, r in left], depth - 1, dims),
        "right": fit_tree([x for x, _ in right], [r for _, r in right], depth - 1, dims),
    }


def tree_value(tree, x):
    while "value" not in tree:
        tree = tree["left"] if x[tree["feature"]] <= tree["threshold"] else tree["right"]
    return tree["value"]


def train_gbt(train, args, rng):
    """Gradient boosting (squared loss) of depth-limited regression trees."""
    base = sum(y for _, y in train) / len(train)
    xs = [x for x, _ in train]
    preds = [base] * len(train)
    dims = len(xs[0])
    trees = []
    progress = Progress(args.n_estimators)
    for round_ in range(args.n_estimators):
        residuals = [y - p for (_, y), p in zip(train, preds)]
        progress.step(round_ + 1, loss=round(sum(r * r for r in residuals) / len(residuals), 6))
        tree = fit_tree(xs, residuals, args.max_depth, dims)
        trees.append(tree)
        for i, x in enumerate(xs):
            preds[i] += args.learning_rate * tree_value(tree, x)

    def predict(x):
        return base + sum(args.learning_rate * tree_value(t, x) for t in trees)

    return {"kind": "gbt", "base": base, "learning_rate": args.learning_rate, "trees": trees}, predict


def train_mlp(train, args, rng):
    dims = len(train[0][0])
    h = args.hidden
    w1 = [[rng.gauss(0, 1 / math.sqrt(dims)) for _ in range(dims)] for _ in range(h)]
    b1 = [0.0] * h
    w2 = [rng.gauss(0, 1 / math.sqrt(h)) for _ in range(h)]
    b2 = 0.0

    def forward(x):
        hidden = [math.tanh(sum(w * v for w, v in zip(row, x)) + b) for row, b in zip(w1, b1)]
        z = sum(w * a for w, a in zip(w2, hidden)) + b2
        z = max(-30.0, min(30.0, z))
        return hidden, 1 / (1 + math.exp(-z))

    progress = Progress(args.epochs)
    for epoch in range(args.epochs):
        rng.shuffle(train)
        total_loss = 0.0
        for x, y in train:
            hidden, p = forward(x)
            total_loss -= math.log(max(p if y > 0.5 else 1 - p, 1e-12))
            grad = p - y
            for j in range(h):
                g_hidden = grad * w2[j] * (1 - hidden[j] ** 2)
                w2[j] -= args.learning_rate * grad * hidden[j]
                for k in range(dims):
                    w1[j][k] -= args.learning_rate * g_hidden * x[k]
                b1[j] -= args.learning_rate * g_hidden
            b2 -= args.learning_rate * grad
        progress.step(epoch + 1, loss=round(total_loss / len(train), 6))

    def predict(x):
        return forward(x)[1]

    return {"kind": "mlp", "w1": w1, "b1": b1, "w2": w2, "b2": b2}, predict


def main():
    model = os.environ.get("CIS490_MODEL", "")
    mode = os.environ.get("CIS490_MODE", "realistic")
    output_dir = os.environ.get("CIS490_OUTPUT_DIR")
    if not output_dir:
        fail("CIS490_OUTPUT_DIR is not set: run me through cis490-agent")
    seed = int(os.environ.get("CIS490_SEED", "0"))
    split_recipe = None
    spec_path = os.environ.get("CIS490_JOB_SPEC")
    if spec_path:
        with open(spec_path, encoding="utf-8") as f:
            split_recipe = json.load(f).get("split_recipe")

    parser = argparse.ArgumentParser(description="cis490 example trainer")
    parser.add_argument("--n_estimators", type=int, default=40)
    parser.add_argument("--max_depth", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--learning_rate", type=float, default=0.1)
    args = parser.parse_args()

    if not (0 < args.learning_rate <= 10):
        fail(f"learning_rate must be in (0, 10], got {args.learning_rate}")
    if args.n_estimators < 1 or args.hidden < 1 or args.epochs < 1:
        fail("n_estimators, hidden and epochs must be at least 1")
    if not (1 <= args.max_depth <= 6):
        fail(f"max_depth must be between 1 and 6, got {args.max_depth}")

    rng = random.Random(seed)
    train, test = make_dataset(seed, split_recipe, mode)
    started = time.time()
    print(f"training {model}/{mode} seed={seed} split={split_recipe} on {len(train)} rows", flush=True)
    if model == "gbt":
        params, predict = train_gbt(train, args, rng)
    elif model == "mlp":
        params, predict = train_mlp(train, args, rng)
    else:
        fail(f"unknown model {model!r}: this trainer knows gbt and mlp")

    # Flat: numbers and strings only (the hyperparameters are the job's, the fleet has them).
    metrics = {
        "model": model,
        "mode": mode,
        "seed": seed,
        "train_accuracy": accuracy(predict, train),
        "accuracy": accuracy(predict, test),
        "train_seconds": round(time.time() - started, 3),
    }
    if split_recipe:
        metrics["split_recipe"] = split_recipe
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "model.json"), "w", encoding="utf-8") as f:
        json.dump(params, f)
    # What it trained with, nested as it came (metrics.json stays flat for the fleet).
    with open(os.path.join(output_dir, "run.json"), "w", encoding="utf-8") as f:
        json.dump({"hyper": vars(args), "seed": seed, "split_recipe": split_recipe}, f, indent=2)
    with open(os.path.join(output_dir, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2, sort_keys=True)
    print(f"done: test accuracy {metrics['accuracy']:.3f}", flush=True)


if __name__ == "__main__":
    main()
