"""micl throughput: training tokens/s, and generation tokens/s of the family's beam search against a bare
``transformers`` ``generate`` loop on the same model and the same prefixes.

Usage: ``python benchmarks/bench_micl.py [--params params.yaml] [--threads N] [--repeats R]``. The model
has the shapes of the params' ``micl`` section (encoders, LM, LoRA) with a fresh initialisation; the data
are the test items of every task. The ratio bare/ours is the wrapper's overhead (target: ours >= 0.9x bare).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
import yaml

from cmml.families.micl.data import TASKS, encoder_input, generate_task, vocabulary
from cmml.families.micl.examples import prompt_example, to_example
from cmml.families.micl.model import Encoders, MiclModel, build_tokenizer


def build(cfg: dict[str, Any]) -> MiclModel:
    """A model of the configured shapes (fresh weights, seeded)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    tok = build_tokenizer(vocabulary())
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=cfg["lm"]["positions"], n_embd=cfg["lm"]["hidden"],
                                    n_layer=cfg["lm"]["layers"], n_head=cfg["lm"]["heads"], bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                                    pad_token_id=tok.pad_token_id))
    return MiclModel(Encoders(cfg["encoders"]["width"]), lm, tok, cfg["lora"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = yaml.safe_load(open(args.params))["micl"]
    model = build(cfg)
    dev = torch.device("cpu")
    samples = []
    with torch.no_grad():
        for t in TASKS:
            for s in generate_task(0, t, "test", cfg["data"]["test"]):
                s["grid"] = model.encoders.grid(s["modality"], encoder_input(s["modality"], s["x"].unsqueeze(0)))[0]
                samples.append(s)
    gen = cfg["generation"]
    bs = int(gen["batch_size"])
    # training: forward + backward + AdamW step over every sample once, tokens = non-padding positions
    opt = torch.optim.AdamW(list(model.trainable().values()), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    train_rates = []
    for _ in range(args.repeats):
        t0, tokens = time.perf_counter(), 0
        for k in range(0, len(samples), 8):
            logits, mask, labels = model.train().forward_batch([to_example(s, g) for s in samples[k:k + 8]], dev)
            loss = model.target_loss(logits, labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            tokens += int(mask.sum())
        train_rates.append(tokens / (time.perf_counter() - t0))
    model.eval()
    kw = {"num_beams": int(gen["num_beams"]), "max_new_tokens": int(gen["max_new_tokens"]),
          "repetition_penalty": float(gen["repetition_penalty"]), "do_sample": False,
          "pad_token_id": model.tok.pad_token_id, "eos_token_id": model.tok.eos_token_id}
    batches = [samples[k:k + bs] for k in range(0, len(samples), bs)]
    ours, bare = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for b in batches:
            model.generate([prompt_example(s) for s in b], dev, gen)
        t_ours = time.perf_counter() - t0
        # bare loop: the same left-padded prefixes, prepared beforehand, straight into generate
        prepared = []
        with torch.no_grad():
            for b in batches:
                pres = model.prefixes([prompt_example(s) for s in b], dev)
                L = max(len(p) for p in pres)
                emb = torch.zeros(len(pres), L, pres[0].shape[1])
                mask = torch.zeros(len(pres), L, dtype=torch.long)
                for i, p in enumerate(pres):
                    emb[i, L - len(p):], mask[i, L - len(p):] = p, 1
                prepared.append((emb, mask))
        t0, n = time.perf_counter(), 0
        with torch.no_grad():
            for emb, mask in prepared:
                out = model.lm.generate(inputs_embeds=emb, attention_mask=mask, **kw)
                n += int((out != model.tok.pad_token_id).sum())  # generated tokens up to and with eos
        bare.append(n / (time.perf_counter() - t0))
        ours.append(n / t_ours)  # the same tokens (identical beams), in our wrapper's time
    med = statistics.median
    print(f"samples {len(samples)}, threads {args.threads}, repeats {args.repeats} (medians)")
    print(f"train: {med(train_rates):.0f} tokens/s")
    print(f"generate (ours): {med(ours):.0f} new tokens/s; bare transformers generate: {med(bare):.0f} new tokens/s; "
          f"ratio {med(ours) / med(bare):.2f}")


if __name__ == "__main__":
    main()
