#!/usr/bin/env python3
"""Golden token ids for tests/tokenizer_test.cpp, computed by an independent implementation.

The reference is llama.cpp's tokenizer through llama-cpp-python (`Llama(vocab_only=True)`), on the
SmolLM2-135M-Instruct vocabulary. The gpt2 and qwen2 pre-tokenizers are exercised by temporary
vocab-only copies of the model whose `tokenizer.ggml.pre` is changed (llama.cpp spells the GPT-2
one "gpt-2"); nothing but this JSON is committed, and the C++ test applies the same pre names to
the real model's vocabulary. Chat goldens are the model's own Jinja template rendered by jinja2.

Run by hand (not by the build), with the reference environment:
    /opt/kvref/bin/python tools/make_tokenizer_golden.py [--model PATH] [--out PATH]
"""

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

import gguf
import jinja2
from llama_cpp import Llama

DEFAULT_MODEL = Path.home() / ".cache/kvgate/models/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests/data/tokenizer/golden.json"

# Our pre name -> llama.cpp's name for the same pre-tokenizer.
PRE_NAMES = {"smollm": "smollm", "gpt2": "gpt-2", "qwen2": "qwen2"}

CURATED = [
    ("prose", "The quick brown fox jumps over the lazy dog. It was a bright cold day in April, "
              "and the clocks were striking thirteen."),
    ("contractions", "don't won't I'LL you're we've she'd they'll it's DON'T He'S 'tis"),
    ("digits", "12345 3.14 2026-11-29 1,000,000 +44 (0)20 7946 0958 0x1F 1e-9"),
    ("python_code", "def add(a, b):\n    \"\"\"Sum.\"\"\"\n    return a + b\n\n\n"
                    "if __name__ == '__main__':\n\tprint(add(1, 2))  # 3\n"),
    ("c_code", "#include <stdio.h>\n\nint main(void) {\n    for (int i = 0; i < 10; ++i) {\n"
               "        printf(\"%d\\n\", i);\n    }\n    return 0;\n}\n"),
    ("whitespace_runs", "a  \n\n  b\t\tc   "),
    ("whitespace_only", " \t\n\r\n   \n"),
    ("crlf", "line one\r\nline two\r\n\r\nend"),
    ("accents", "Café naïve façade résumé Ångström Straße ÉCOLE"),
    ("cjk", "日本語のテキストと中文文本，还有한국어 텍스트。"),
    ("emoji", "I ❤️ tokens 🤖🚀 👩‍👩‍👧‍👦 🇫🇷 done"),
    ("combining", "e\u0301 a\u0308 n\u0303o Z\u0351\u0352a\u0353l\u0354g\u0355o"),
    ("rtl", "שלום עולם مرحبا بالعالم 123 ١٢٣"),
    ("unicode_digits", "٣ ४२ ⅷ ½ ²³ ①②"),
    ("unicode_spaces", "a\u00a0b\u2003c\u3000d\u2028e\u0085f"),
    # U+180E is whitespace to PCRE2's \s but not to Unicode White_Space (nor llama.cpp).
    ("not_whitespace", "a \u180e٣ x\u180e\u180ey \u200b z\ufeff \x1c\x1d w"),
    ("punctuation", "Hello!!! ... ?!? --- *** (a) [b] {c} <d> \"e\" 'f' `g` ~~~ ^_^ @#$%&"),
    ("apostrophe_edges", "'s 's' ''s x'y rock'n'roll '  'll"),
    ("special_lookalike", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"),
    ("special_adjacent", "<|im_end|><|im_end|>x<|endoftext|>  <|im_start|>"),
    ("special_partial", "<|im_start <|im_end|| <|im_start|"),
    ("empty", ""),
    ("single_space", " "),
    ("single_newline", "\n"),
    ("long_word", "pneumonoultramicroscopicsilicovolcanoconiosis" * 3),
    ("long_digits", "3141592653589793238462643383279502884197169399375105820974944592"),
    ("mixed_script", "abc123def ГДЕ456 ñ7ü x²+y²=z²"),
    # SmolLM2 has no token for some control bytes (0x04, 0x1D...): llama.cpp drops them.
    ("control_bytes", "nul\x00 soh\x01 eot\x04 bel\x07 esc\x1b[0m gs\x1d del\x7f end"),
]

# Bytes that are not UTF-8: llama.cpp replaces each with U+FFFD while kvgate keeps the bytes
# (one token per byte), so for these only a round trip is tested; llama.cpp's ids are recorded.
INVALID_UTF8 = [
    ("invalid_lone_continuation", b"ab\x80cd"),
    ("invalid_truncated", b"caf\xc3"),
    ("invalid_mixed", b"\xff\xfe hello \xed\xa0\x80 world \xc0\xaf"),
]


def random_texts(n: int, seed: int) -> list[str]:
    """Strings from an alphabet that stresses every branch of the pre-tokenizer regexes."""
    pieces = [
        "a", "b", "Z", "é", "ß", "Ж", "日", "한", "ا", "\u0301", "'", "'s", "'LL", "'re", "'d",
        "0", "7", "٣", "½", " ", " ", " ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", ".", ",",
        "!", "?", "-", "_", "(", ")", "{", "}", "#", "$", "🙂", "👍🏽", "<", "|", ">", "im_end",
        "the", " the", "ing", "tion", "://", "...", "\\", "\"", "\u180e", "\u200b", "\x1c",
        "\u2028", "\x85", "\u0378",
    ]
    # Not U+1E030 and other characters assigned after Unicode 14: PCRE2 10.42 (Debian 12) does
    # not know them as letters, llama.cpp's newer tables do, and pieces differ around them.
    rng = random.Random(seed)
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 24))) for _ in range(n)]


def make_vocab_only_copy(reader: gguf.GGUFReader, pre: str, path: str) -> None:
    """The model's metadata with tokenizer.ggml.pre replaced, and no tensors."""
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(path, arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        val_type = field.types[0]
        sub_type = field.types[-1] if val_type == gguf.GGUFValueType.ARRAY else None
        value = pre if field.name == gguf.Keys.Tokenizer.PRE else field.contents()
        writer.add_key_value(field.name, value, val_type, sub_type=sub_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()


def tokenize_cases(llm: Llama, texts: list[tuple[str, bytes]]) -> list[dict]:
    cases = []
    for name, raw in texts:
        for special in (False, True):
            case = {"name": name, "special": special}
            try:
                case["text"] = raw.decode("utf-8")
            except UnicodeDecodeError:
                case["hex"] = raw.hex()
                case["llama_replaces_invalid_utf8"] = True
            case["ids"] = llm.tokenize(raw, add_bos=False, special=special)
            cases.append(case)
    return cases


def chat_goldens(template: str) -> list[dict]:
    env = jinja2.Environment()
    conversations = [
        [{"role": "user", "content": "hi"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
        [{"role": "user", "content": "Hello"},
         {"role": "assistant", "content": "Hi! How can I help?"},
         {"role": "user", "content": "Tell me a joke.\nA short one."}],
        [],
    ]
    out = []
    for messages in conversations:
        for add_generation_prompt in (False, True):
            text = env.from_string(template).render(messages=messages,
                                                    add_generation_prompt=add_generation_prompt)
            out.append({"messages": messages, "add_assistant_prompt": add_generation_prompt,
                        "text": text})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--n-random", type=int, default=300)
    args = parser.parse_args()

    reader = gguf.GGUFReader(args.model)
    texts = [(name, text.encode("utf-8")) for name, text in CURATED] + INVALID_UTF8
    texts += [(f"random_{i}", t.encode("utf-8"))
              for i, t in enumerate(random_texts(args.n_random, seed=29))]

    result = {
        "generator": "tools/make_tokenizer_golden.py",
        "reference": "llama-cpp-python " + __import__("llama_cpp").__version__ + ", vocab_only",
        "model": os.path.basename(args.model),
        "pre_tokenizers": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for ours, theirs in PRE_NAMES.items():
            path = os.path.join(tmp, f"vocab_{ours}.gguf")
            make_vocab_only_copy(reader, theirs, path)
            llm = Llama(model_path=path, vocab_only=True, verbose=False)
            result["pre_tokenizers"][ours] = tokenize_cases(llm, texts)
            del llm

    template = reader.fields[gguf.Keys.Tokenizer.CHAT_TEMPLATE].contents()
    result["chat"] = chat_goldens(template)

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=True, indent=None, separators=(",", ":"))
        f.write("\n")
    n_cases = sum(len(c) for c in result["pre_tokenizers"].values())
    print(f"wrote {args.out}: {n_cases} tokenization cases, {len(result['chat'])} chat cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
