"""Build tiny random-init decoders (Mistral, Llama) with a locally trained BPE tokenizer.

Every decoder experiment runs offline on this CPU through one of these folders:

    python -m tools.tiny_models --arch mistral --out tiny_models/mistral --data medquad
    python run.py experiment=lora_tiny_mistral

The tokenizer is a byte-level BPE trained with `tokenizers` on the dataset's text (or on the
texts passed to `build_tiny_decoder`), with `<s>`, `</s>`, `<pad>`, `<unk>` and a Mistral-style
chat template, so `AutoTokenizer` / `AutoModelForCausalLM.from_pretrained(folder)` load it.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from pathlib import Path

from tunelab.base.data_root import data_root

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
# Mistral-style: `<s>[INST] question [/INST] answer</s>`; the system message (if any) is
# prepended to the first user turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = message['content'] + '\n\n' %}"
    "{% elif message['role'] == 'user' %}[INST] {{ ns.system }}{{ message['content'] }} [/INST]"
    "{% set ns.system = '' %}"
    "{% elif message['role'] == 'assistant' %} {{ message['content'] }}{{ eos_token }}"
    "{% endif %}{% endfor %}"
)
ARCHS = ("mistral", "llama")


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2000, chat_template: bool = True):
    """A byte-level BPE `PreTrainedTokenizerFast` trained on `texts`.

    Args:
        texts: training text (questions and answers of the dataset).
        vocab_size: BPE vocabulary size, special tokens included.
        chat_template: attach `CHAT_TEMPLATE` (False: a tokenizer without one, for the plain
            prompt template).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=4096,
    )
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def decoder_config(arch: str, tokenizer, hidden: int = 64, layers: int = 2, **overrides):
    """A small `MistralConfig` / `LlamaConfig` matching `tokenizer`'s vocabulary and ids.

    Args:
        arch: `mistral` or `llama`.
        tokenizer: the tokenizer (vocabulary size, bos/eos/pad ids).
        hidden: hidden size (4 query heads, 2 key/value heads: grouped-query attention).
        layers: decoder layers.
        **overrides: any other config field (e.g. `intermediate_size` for the benchmark).
    """
    from transformers import LlamaConfig, MistralConfig

    if arch not in ARCHS:
        raise ValueError(f"unknown arch '{arch}'; choose one of {ARCHS}")
    fields = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
        # With the usual 0.02, a 64-wide random model's logits stay near zero through a frozen
        # head and norms, so adapters alone cannot fit anything; 0.1 lets LoRA/QLoRA learn.
        "initializer_range": 0.1,
        **overrides,
    }
    return (MistralConfig if arch == "mistral" else LlamaConfig)(**fields)


def build_tiny_decoder(
    out: str | Path,
    texts: Iterable[str],
    arch: str = "mistral",
    vocab_size: int = 2000,
    seed: int = 0,
    chat_template: bool = True,
    **config: object,
) -> Path:
    """Train a tokenizer on `texts`, build a random-init 2-layer hidden-64 decoder, save both.

    Args:
        out: the folder to write.
        texts: text the tokenizer is trained on.
        arch: `mistral` or `llama`.
        vocab_size: BPE vocabulary size.
        seed: seed of the random weights.
        chat_template: attach the chat template to the tokenizer.
        **config: `decoder_config` overrides (`hidden`, `layers`, any config field).

    Returns:
        The Hugging Face folder (`config.json`, `model.safetensors`, tokenizer files).
    """
    import torch
    from transformers import AutoModelForCausalLM

    out = Path(out)
    tokenizer = train_tokenizer(texts, vocab_size, chat_template)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(decoder_config(arch, tokenizer, **config))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def dataset_texts(data: str, root: str) -> Iterator[str]:
    """Questions and answers of a bundled dataset (`medquad` or `pubmedqa`) under `root`."""
    if data == "medquad":
        from datamodules.medquad import read_medquad

        for pair in read_medquad(Path(root) / "medquad"):
            yield pair["question"]
            yield pair["answer"]
    elif data == "pubmedqa":
        from datamodules.pubmedqa import read_pubmedqa

        for row in read_pubmedqa(Path(root) / "pubmedqa")[0]:
            yield row["question"]
            yield row["context"]
            yield row["answer"]
    else:
        raise ValueError(f"unknown --data '{data}'; choose medquad or pubmedqa")


def main(argv: list[str] | None = None) -> Path:
    """CLI: `python -m tools.tiny_models --arch mistral --out tiny_models/mistral`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=ARCHS, default="mistral")
    parser.add_argument("--out", default=None, help="folder (default: tiny_models/<arch>)")
    parser.add_argument("--data", choices=("medquad", "pubmedqa"), default="medquad")
    parser.add_argument("--root", default=data_root())
    parser.add_argument("--vocab-size", type=int, default=2000)
    args = parser.parse_args(argv)
    out = args.out or f"tiny_models/{args.arch}"
    texts = dataset_texts(args.data, args.root)
    folder = build_tiny_decoder(out, texts, args.arch, args.vocab_size)
    print(f"tiny {args.arch} written to {folder}")
    return folder


if __name__ == "__main__":
    main()
