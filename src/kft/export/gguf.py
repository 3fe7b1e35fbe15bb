"""A merged model as one GGUF file for llama.cpp / Ollama, and an Ollama Modelfile beside it.

Generic over families: the transformers export's config and weights (kft.export.hf) are renamed to
llama.cpp's tensor names by the `gguf` package's own map for the family's architecture
(`Family.gguf_arch`), transformed where llama.cpp stores them otherwise (`Family.gguf_tensor`:
Llama's rotary q/k row order; Gemma's norms as 1 + w), and written with the tokenizer (byte-level
BPE from the export's tokenizer.json, or SentencePiece from its tokenizer.model) and the chat
template kft trained with. Read back by transformers
(`from_pretrained(DIR, gguf_file=...)`) in tests/test_gguf.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kft import families
from kft.core.errors import KftError

QUANTS = ("f32", "f16", "bf16", "q8_0", "q4_0")


def check(family: str, quant: str) -> None:
    """Refuse, before anything is written, a family or quantization kft does not write."""
    if quant not in QUANTS:
        raise KftError(f"--quant must be one of {', '.join(QUANTS)}, got '{quant}'")
    _exporting(family)


def chat_of(template: str, tokenizer, family: str):
    """The chat format a run trained with (None for Dolly and custom templates)."""
    if template == "chat":
        return families.chat_for(families.get(family), set(tokenizer.get_vocabulary()))
    return families.CHAT_TEMPLATES.get(template)


DOLLY_JINJA = (
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ 'Instruction:\\n' + message['content'] + '\\n\\nResponse:\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + '\\n\\n' }}"
    "{% endif %}{% endfor %}"
)
DOLLY_OLLAMA = "Instruction:\n{{ .Prompt }}\n\nResponse:\n"


def _exporting(family: str) -> families.Family:
    f = families.get(family)
    if not f.gguf_arch:
        supported = sorted(n for n, g in families.FAMILIES.items() if g.gguf_arch)
        raise KftError(
            f"kft has no GGUF export for {family} models yet; it writes {', '.join(supported)}"
        )
    return f


def _sentencepiece(writer, folder: Path, family: families.Family, chat_template: str) -> None:
    """A SentencePiece vocabulary (Gemma, Llama 2, Mistral) as llama.cpp's `llama` tokenizer: pieces,
    scores and types from the export's tokenizer.model, the special ids, a start token added."""
    import gguf
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    size = processor.get_piece_size()
    # Runs of "▁" alone are written as spaces, as in llama.cpp's own Gemma 3 file.
    tokens = [processor.id_to_piece(i) for i in range(size)]
    tokens = [t.replace("▁", " ") if len(t) > 1 and set(t) == {"▁"} else t for t in tokens]
    scores = [processor.get_score(i) for i in range(size)]

    def kind(i: int) -> int:
        for test, token_type in (
            (processor.is_unknown, gguf.TokenType.UNKNOWN),
            (processor.is_control, gguf.TokenType.CONTROL),
            (processor.is_unused, gguf.TokenType.UNUSED),
            (processor.is_byte, gguf.TokenType.BYTE),
        ):
            if test(i):
                return token_type
        return gguf.TokenType.NORMAL

    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    ids = {t: i for i, t in enumerate(tokens)}
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre(family.gguf_pre_tokenizer)
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types([kind(i) for i in range(size)])
    writer.add_bos_token_id(ids[config["bos_token"]])
    writer.add_eos_token_id(ids[config["eos_token"]])
    if config.get("unk_token") in ids:
        writer.add_unk_token_id(ids[config["unk_token"]])
    if config.get("pad_token") in ids:
        writer.add_pad_token_id(ids[config["pad_token"]])
    writer.add_add_bos_token(True)
    writer.add_add_sep_token(False)
    writer.add_add_eos_token(False)
    # Llama 2 / Mistral prefix a space ("▁Hello"), Gemma does not: the model file says which.
    writer.add_add_space_prefix(_adds_dummy_prefix(folder / "tokenizer.model"))
    if chat_template:
        writer.add_chat_template(chat_template)


def _adds_dummy_prefix(model_file: Path) -> bool:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_file.read_bytes())
    return bool(proto.normalizer_spec.add_dummy_prefix)


def _tokenizer(writer, folder: Path, family: families.Family, chat_template: str) -> None:
    """Byte-level BPE (what transformers' GGUF reader turns back into a fast tokenizer)."""
    import gguf

    if (folder / "tokenizer.model").is_file() and not (folder / "tokenizer.json").is_file():
        _sentencepiece(writer, folder, family, chat_template)
        return
    document = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    vocabulary = dict(document["model"]["vocab"])
    special = {t["content"]: t["id"] for t in document.get("added_tokens", [])}
    vocabulary.update(special)
    tokens = [None] * (max(vocabulary.values()) + 1)
    for token, i in vocabulary.items():
        tokens[i] = token
    tokens = [t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)]
    types = [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in document["model"]["merges"]]
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(family.gguf_pre_tokenizer)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    if config.get("bos_token") in vocabulary:
        writer.add_bos_token_id(vocabulary[config["bos_token"]])
    writer.add_eos_token_id(vocabulary[config["eos_token"]])
    writer.add_add_bos_token(bool(family.gguf_adds_bos and config.get("bos_token") in vocabulary))
    writer.add_chat_template(chat_template)


def write(
    hf_folder: Path, family: str, out: Path, quant: str = "f16", name: str = "model", chat=None
) -> Path:
    """`out`/`name`.gguf from a transformers export folder of `family`; returns the file. Its chat
    template is `chat`'s Jinja (the run's chat format), else Dolly's prompt as a template."""
    import gguf
    from safetensors.numpy import load_file

    check(family, quant)
    f = families.get(family)
    config = json.loads((hf_folder / "config.json").read_text())
    weights = load_file(str(hf_folder / "model.safetensors"))
    arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == f.gguf_arch)
    names = gguf.get_tensor_name_map(arch, config["num_hidden_layers"])
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.gguf"
    writer = gguf.GGUFWriter(str(path), f.gguf_arch)
    writer.add_type("model")
    writer.add_name(name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_key_length(config["head_dim"])
    writer.add_value_length(config["head_dim"])
    f.gguf_metadata(writer, config)
    writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[quant]))
    _tokenizer(writer, hf_folder, f, chat.jinja if chat is not None and chat.jinja else DOLLY_JINJA)
    for hf_name, array in weights.items():
        base, suffix = hf_name.rsplit(".", 1)
        mapped = names.get_name(base)
        if mapped is None:
            raise KftError(f"no GGUF name for {hf_name} in llama.cpp's {f.gguf_arch} map")
        array = f.gguf_tensor(mapped, np.asarray(array, "float32"), config)
        data, raw_dtype = _encoded(gguf, array, quant)
        writer.add_tensor(f"{mapped}.{suffix}", data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_lora(backbone, config: dict, family: str, scale: float, out: Path, quant: str) -> Path:
    """`out`/adapter.gguf: `backbone`'s LoRA as a llama.cpp adapter (`llama-cli -m base.gguf --lora
    adapter.gguf`). Each projection's exact low-rank pair (kft.export.peft.factors: rank heads x r
    for Keras' per-head q/k/v) under the base's tensor names, in the base's layout (Llama's rotary
    rows apply to B's rows). llama.cpp scales by alpha / rank with rank read per tensor, which
    differs between the per-head and the other projections, so the scale is folded into B and
    `adapter.lora.alpha` is 0 (llama.cpp then applies B @ A as it is)."""
    import gguf

    from kft.export import peft

    check(family, quant)
    f = families.get(family)
    arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == f.gguf_arch)
    names = gguf.get_tensor_name_map(arch, config["num_hidden_layers"])
    out.mkdir(parents=True, exist_ok=True)
    path = out / "adapter.gguf"
    writer = gguf.GGUFWriter(str(path), f.gguf_arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 0.0)
    written = 0
    for i, module, lora_a, lora_b in peft.factors(backbone):
        mapped = names.get_name(f"model.layers.{i}.{module}")
        if mapped is None:
            raise KftError(
                f"no GGUF name for layer {i}'s {module} in llama.cpp's {f.gguf_arch} map"
            )
        lora_b = f.gguf_tensor(mapped, lora_b * scale, config)
        for suffix, array in (("lora_a", lora_a), ("lora_b", lora_b)):
            data, raw_dtype = _encoded(gguf, np.ascontiguousarray(array), quant)
            writer.add_tensor(f"{mapped}.weight.{suffix}", data, raw_dtype=raw_dtype)
        written += 1
    if not written:
        raise KftError("the run's model has no LoRA layers to write as an adapter")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


FILE_TYPES = {
    "f32": "ALL_F32",
    "f16": "MOSTLY_F16",
    "bf16": "MOSTLY_BF16",
    "q8_0": "MOSTLY_Q8_0",
    "q4_0": "MOSTLY_Q4_0",
}


def _encoded(gguf, array: np.ndarray, quant: str) -> tuple:
    """(data, raw dtype or None) for GGUFWriter.add_tensor: vectors stay f32 (norms, biases), as
    llama.cpp's converter keeps them; a matrix whose rows are not whole blocks of 32 (Q8_0, Q4_0)
    goes f16, as llama.cpp's converter falls back."""
    if array.ndim < 2 or quant == "f32":
        return array.astype("float32"), None
    if quant == "f16" or (quant.startswith("q") and array.shape[-1] % 32):
        return array.astype("float16"), None
    qtype = getattr(gguf.GGMLQuantizationType, quant.upper())
    return gguf.quants.quantize(array, qtype), qtype


def modelfile(gguf_file: Path, chat, tokenizer, adapter: Path | None = None) -> str:
    """An Ollama Modelfile for `gguf_file` beside it (and the LoRA `adapter` GGUF over it): the
    turns kft trained with (`chat`, a kft.families.chat.ChatFormat; None: Dolly's prompt) and
    their end marker as a stop."""
    template = chat.ollama if chat is not None else DOLLY_OLLAMA
    stop = chat.end if chat is not None else tokenizer.end_token
    lines = [f"FROM ./{gguf_file.name}"]
    if adapter is not None:
        lines.append(f"ADAPTER ./{adapter.name}")
    if template:
        lines.append(f'TEMPLATE """{template}"""')
    lines.append(f'PARAMETER stop "{stop}"')
    return "\n".join(lines) + "\n"
