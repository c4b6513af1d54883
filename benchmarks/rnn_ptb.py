"""Reduced recurrent search and language-model training on the real Penn Treebank, on the CPU.

    python benchmarks/rnn_ptb.py --data ../shared/data/ptb            # both, about 5 minutes each
    python benchmarks/rnn_ptb.py --data ../shared/data/ptb --only train

The search is DARTS second order (``darts-v2``) on the ``darts-rnn`` space at reduced sizes (hidden size,
tokens, epochs below); the training trains the searched cell's language model (or ``--genotype``) at reduced
sizes, then measures validation and test perplexity of its best epoch on the full PTB splits. Everything
else is the paper's setting. Results go to benchmarks/out/rnn_ptb-<time>.json and are printed.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import dnas
from dnas.rnn.train import evaluate_lm_run

OUT = Path(__file__).resolve().parent / "out"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/ptb")
    p.add_argument("--only", choices=["search", "train"])
    p.add_argument("--genotype", help="train this genotype instead of the searched one (default: DARTS_RNN_V2 "
                                      "when --only train)")
    p.add_argument("--hidden", type=int, default=64, help="embedding = hidden size (paper: 300 search, 850 train)")
    p.add_argument("--search-tokens", type=int, default=100_000, help="training tokens of the search")
    p.add_argument("--search-epochs", type=int, default=1)
    p.add_argument("--train-tokens", type=int, default=300_000, help="training tokens of the training")
    p.add_argument("--train-epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs = OUT / f"rnn_ptb-{stamp}"
    result = {"torch": torch.__version__, "threads": args.threads, "settings": vars(args)}
    genotype = args.genotype or "DARTS_RNN_V2"
    if args.only != "train":
        t0 = time.time()
        s = dnas.search(space="darts-rnn", method="darts-v2", dataset="ptb", data=args.data, run_dir=runs / "search",
                        epochs=args.search_epochs, subset=args.search_tokens, batch_size=args.batch_size,
                        emb_size=args.hidden, hidden_size=args.hidden, progress=False)
        result["search"] = {"seconds": round(time.time() - t0, 1), "genotype": str(s.genotype),
                            "metrics": s.metrics}
        genotype = args.genotype or s.genotype
    if args.only != "search":
        t0 = time.time()
        t = dnas.train(genotype, "ptb", data=args.data, run_dir=runs / "train", epochs=args.train_epochs,
                       subset=args.train_tokens, batch_size=args.batch_size, emb_size=args.hidden,
                       hidden_size=args.hidden, progress=False)
        seconds = round(time.time() - t0, 1)
        report = evaluate_lm_run(t.run_dir, weights="best", device="cpu", batch_size=10, progress=False)
        result["train"] = {"seconds": seconds, "genotype": str(t.genotype), "params": t.params,
                           "metrics": t.metrics, "valid_ppl": report.valid_ppl, "test_ppl": report.test_ppl,
                           "test_batch_size": 10}
    OUT.mkdir(exist_ok=True)
    path = OUT / f"rnn_ptb-{stamp}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "settings"}, indent=1))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
