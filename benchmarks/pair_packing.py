"""Positions a preference run computes per epoch, with and without packing pairs (no training).

    python benchmarks/pair_packing.py [--config configs/gemma3_270m_dpo.yaml] [--source SOURCE]

Builds the config's pairs with its tokenizer and counts the positions of every training batch as
the run cuts them (train.pad_to_multiple, train.group_by_length): unpacked at data.seq_len and
train.batch_size pairs; packed at seq_len x 1, 2 and 4 with batch_size / that factor rows (about
the same pairs per step). Fewer positions for the same pairs is what packing saves.
"""

import argparse
from dataclasses import replace

import keras_hub

from kft.config import load
from kft.data import dataset, preference
from kft.models import presets


def positions(c, tokenizer, records, packing: bool, seq_len: int, batch_size: int) -> dict:
    data = replace(c.data, packing=packing, seq_len=seq_len)
    split = preference.build(records, tokenizer, data, c.train.seed).train
    steps = len(split) // batch_size
    batches = dataset.batches(
        split,
        batch_size,
        steps,
        c.train.seed,
        trained_only=True,
        pad_to_multiple=c.train.pad_to_multiple,
        group_by_length=c.train.group_by_length,
        program_cost_steps=dataset.PROGRAM_COST_STEPS,
    )
    total = sum(batches[i][0]["token_ids"].size for i in range(steps))
    real = sum(batches.tokens(i) for i in range(steps))
    return {
        "rows": len(split),
        "steps": steps,
        "positions": total,
        "padding": 1 - real / total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/gemma3_270m_dpo.yaml")
    parser.add_argument("--source", default=None, help="data.source instead of the config's")
    args = parser.parse_args()
    c = load(args.config)
    if args.source:
        c = replace(c, data=replace(c.data, source=args.source, eval_source=""))
    tokenizer = keras_hub.models.Tokenizer.from_preset(str(presets.resolve(c.model.preset)))
    records, _ = dataset.load_sources(c.data)
    seq, batch = c.data.seq_len, c.train.batch_size
    base = positions(c, tokenizer, records, False, seq, batch)
    print(
        f"{'layout':<34} {'rows':>5} {'steps':>6} {'positions':>10} {'padding':>8} {'vs unpacked':>12}"
    )
    cases = [("unpacked", False, seq, batch)] + [
        (f"packed, rows of {2 * seq * k}", True, seq * k, max(1, batch // k)) for k in (1, 2, 4)
    ]
    for name, packing, seq_len, batch_size in cases:
        r = base if not packing else positions(c, tokenizer, records, packing, seq_len, batch_size)
        print(
            f"{name + f' x {batch_size}':<34} {r['rows']:>5} {r['steps']:>6} {r['positions']:>10,} "
            f"{100 * r['padding']:>7.1f}% {r['positions'] / base['positions']:>12.3f}"
        )


if __name__ == "__main__":
    main()
