"""Convert a kft run to Hugging Face transformers / PEFT form, without the `kft` command.

    python scripts/convert_to_hf.py RUN_DIR OUT_DIR            # merged transformers checkpoint
    python scripts/convert_to_hf.py RUN_DIR OUT_DIR --peft     # OUT_DIR/base (transformers) + OUT_DIR/adapter (PEFT)

Then, in transformers:
    model = AutoModelForCausalLM.from_pretrained(OUT_DIR)                       # merged
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(OUT_DIR/base), OUT_DIR/adapter)

The same code as `kft export` (kft.export): LoRA merged exactly (not the base kernels that
KerasHub's own exporter reads), Gemma 2's extra norms and soft-capping included, and the PEFT
adapter exact (per-head LoRA expressed with rank_pattern; see kft/export/peft.py).
"""

import argparse
from pathlib import Path

from kft.core.errors import KftError
from kft.export import export


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("out_dir")
    parser.add_argument(
        "--peft", action="store_true", help="write the base model and a PEFT adapter instead"
    )
    args = parser.parse_args(argv)
    try:
        if args.peft:
            out = Path(args.out_dir)
            export(args.run_dir, "hf", str(out / "base"), base=True)
            export(args.run_dir, "peft", str(out / "adapter"))
        else:
            export(args.run_dir, "hf", args.out_dir)
    except KftError as e:
        raise SystemExit(f"convert_to_hf: {e}")
    print(args.out_dir)


if __name__ == "__main__":
    main()
