#!/usr/bin/env python3
"""Generates the tokenizer fixtures of tests/runtime/tokenizer_test.cpp.

There is no network here, so real Gemma / Llama 3 / Qwen2 tokenizers cannot be downloaded:
this script trains small look-alikes from a fixed built-in text with the reference packages
(PyPI `tokenizers` and `sentencepiece`), using the real files' settings (pre-tokenizer regexes,
normalizer, post-processor, special tokens, piece types), encodes a fixed set of awkward strings
with the references and writes the expected ids and texts next to the models.

CI never runs it; its output is committed under tests/runtime/fixtures/tokenizers/.
Run it with a Python that has tokenizers, sentencepiece and transformers (for the chat
templates), e.g.:
    /work/refvenv/bin/python tests/runtime/make_tokenizer_fixtures.py
"""
import io
import json
import os
import random
import unicodedata

import sentencepiece as spm
import tokenizers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "tokenizers")
FUZZ_SEEDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fuzz", "seeds", "tokenizer")
SEED = 20261203
VOCAB = 1000

# The split regexes of the real tokenizer.json files (Meta-Llama-3-8B, Qwen2-0.5B).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# The chat templates of the real tokenizer_config.json files (gemma-3-1b-it without its
# image branch, Meta-Llama-3-8B-Instruct, Qwen2-0.5B-Instruct).
GEMMA_TEMPLATE = (
    "{{ bos_token }}\n{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n    {%- set loop_messages = messages -%}\n{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n        {%- set role = message['role'] -%}\n    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'text' -%}\n                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n        {%- endfor -%}\n"
    "    {%- else -%}\n        {{ raise_exception(\"Invalid content type\") }}\n    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n    {{'<start_of_turn>model\\n'}}\n{%- endif -%}\n")
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim "
    "+ '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

TRAIN_TEXT = """\
The quick brown fox jumps over the lazy dog. It's a sentence that uses every letter.
I'll be there at 10:30, don't worry; we're going to the station and they've left already.
Cold starts matter: a model of 2 GiB must reach its first token in well under a second.
The tokenizer splits text into pieces, then merges the most frequent pairs of bytes.
In 1999, 42 people bought 1,234,567 apples for $3.50 each (about 4.3 million dollars).
Temperatures fell to -12.5 degrees; the forecast said 70% chance of snow on 2024-01-15.
She said, "Why not?" and he replied: 'Because the weights are still arriving!'
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 256 1024 65536 3.14159 2.71828 1e-5 0xFF.
Café, naïve, résumé, façade, jalapeño, crème brûlée, Zürich, São Paulo, Ærø, Łódź.
Über den Wolken muss die Freiheit wohl grenzenlos sein. Straße, Mädchen, schön, groß.
Le renard brun rapide saute par-dessus le chien paresseux. Où est la bibliothèque ?
El rápido zorro marrón salta sobre el perro perezoso. ¿Dónde está la estación? ¡Hola!
Быстрая коричневая лиса прыгает через ленивую собаку. Привет, мир!
Η γρήγορη καφέ αλεπού πηδάει πάνω από το τεμπέλικο σκυλί.
日本語の文章を分割します。東京は日本の首都です。今日はいい天気ですね。
中文分词是自然语言处理的基础。北京是中国的首都。我们今天去公园散步。
한국어 문장도 토큰으로 나눕니다. 서울은 한국의 수도입니다.
مرحبا بالعالم. नमस्ते दुनिया। שלום עולם. สวัสดีชาวโลก
Emoji time: 🦙 🚀 👍 👍🏽 🎉 ❤️ 👨‍👩‍👧 🇫🇷 😀😃😄 — and symbols ✓ ✗ → ← ∞ ≤ ≥ ± × ÷ € £ ¥ ©.
def forward(self, x):
    h = self.embed(x) * math.sqrt(self.hidden_size)
    for layer in self.layers:
        h = layer(h, positions=pos, cache=kv_cache)
    return self.norm(h) @ self.lm_head.T  # logits
int main(int argc, char** argv) {
  std::vector<std::int32_t> ids = {2, 17, 200};
  if (argc > 1 && std::strcmp(argv[1], "--help") == 0) { return 0; }
  for (auto id : ids) std::printf("%d\\n", id);
}
SELECT name, COUNT(*) FROM users WHERE created_at >= '2024-01-01' GROUP BY name;
<html><body><p class="note">Hello &amp; welcome</p></body></html>
{"model_type": "llama", "hidden_size": 4096, "rope_theta": 500000.0, "vocab_size": 128256}
https://example.com/path/to/file?query=1&other=two#anchor  user@example.org
    Indented text with    multiple   spaces and\ttabs\tbetween\twords.
Line one.\r\nLine two with Windows endings.\r\nLine three.

Paragraph after a blank line.   Trailing spaces here.   
ALL CAPS SHOUTING IS HERE. MixedCase CamelCaseIdentifiers and snake_case_names.
"""

WORDS = ("time person year way day thing man world life hand part child eye woman place work week "
         "case point government company number group problem fact model token layer weight cache "
         "stream bucket object request budget thread engine loader runtime tensor memory").split()


def training_lines():
    rng = random.Random(SEED)
    lines = TRAIN_TEXT.split("\n")
    for _ in range(300):  # frequent English words and numbers, so merges look like a real vocabulary
        n = rng.randint(4, 14)
        words = [rng.choice(WORDS) for _ in range(n)]
        if rng.random() < 0.3:
            words.insert(rng.randrange(n), str(rng.randint(0, 99999)))
        line = " ".join(words)
        lines.append(line.capitalize() + rng.choice([".", "!", "?", ",", ";", ""]))
    return [l for l in lines if l]


# Inline special tokens of all three tokenizers appear in every tokenizer's cases: for the others
# they are plain text.
CASES = [
    "", " ", "   ", "\t", "\n", "\n\n\n", "\r\n", " \r\n \r\n", "Hello world", " Hello world",
    "Hello  world   ", "  leading and trailing  ", "I'LL don't you'd WE'VE it's they'Re 'ſ",
    "1234567", "3.14159 and 1,000,000 or 12345678901", "naïve café résumé",
    "caf\u00e9 vs cafe\u0301 (NFC vs NFD)", unicodedata.normalize("NFD", "Crème brûlée à Zürich"),
    "\u1100\u1161\u11a8 jamo", "日本語のテキスト", "中文分词测试", "한국어 문장",
    "emoji 🦙🚀👍🏽 family 👨‍👩‍👧 flag 🇫🇷", "def f(x):\n    return x**2  # square\n",
    "if (a<=b && c!=d) { return; }", "x\u00a0y\u2003z\u3000w\u0085v", "tab\tseparated\tvalues",
    "multiple\n\n  \n lines\n", "Ⅻ ½ ² ﬁ ligature", "zero\u200bwidth", "Z̷̢a̶l̵g̸o",
    "مرحبا नमस्ते", "https://example.com/a?b=1&c=2 user@example.org", "....!!!???---",
    "supercalifragilisticexpialidocious" * 12, "a" * 300, "<|begin_of_text|>Hi<|eot_id|>",
    "<|start_header_id|>user<|end_header_id|>\n\nhello", "a<|end_of_text|>b",
    "<|im_start|>user\nhi<|im_end|>\n", "x <|endoftext|> y", "<bos><start_of_turn>user\nhi<end_of_turn>\n",
    "<eos><pad><unk><mask>", "<|im_start|<|im_start|>>", "<h1>Title</h1>\n\n\n\n<table> <unused7>",
]

CHAT_PROMPTS = ["Hello!", "  What is 2+2?\n", "日本語で答えて 🦙", "Write <b>bold</b> text.", "\u3000\u00a0hi\x1c\u2029"]

# Added-token flags the real files leave off (lstrip, rstrip, single_word), on a copy of the
# Qwen2 tokenizer: <|im_start|> strips both sides, <|im_end|> matches only as a single word.
FLAG_CASES = ["a  <|im_start|> \n b", "x<|im_end|>y", "x <|im_end|> y", "<|im_end|>", "é<|im_end|>", "_<|im_end|>",
              "<|im_end|>.", " <|im_start|>", "<|im_start|>   ", "a <|im_start|><|im_start|> b", "\u3000<|im_start|>\u00a0x"]


def write_json(name, obj):
    with open(os.path.join(OUT, name), "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1, sort_keys=True)
        f.write("\n")


def render(template, prompt, bos):
    # transformers' own renderer: a sandboxed jinja2 environment with trim_blocks/lstrip_blocks.
    from transformers.utils.chat_template_utils import render_jinja_template
    rendered, _ = render_jinja_template(conversations=[[{"role": "user", "content": prompt}]],
                                        chat_template=template, add_generation_prompt=True,
                                        bos_token=bos)
    return rendered[0]


def bpe_fixture(name, tok, specials, template, bos, config, generation_config, tokenizer_config):
    os.makedirs(os.path.join(OUT, name), exist_ok=True)
    tok.save(os.path.join(OUT, name, "tokenizer.json"))
    tokenizer_config["chat_template"] = template
    tokenizer_config["added_tokens_decoder"] = {
        str(tok.token_to_id(s)): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                                  "single_word": False, "special": True} for s in specials}
    write_json(f"{name}/tokenizer_config.json", tokenizer_config)
    write_json(f"{name}/config.json", config)
    if generation_config is not None:
        write_json(f"{name}/generation_config.json", generation_config)
    cases = []
    for text in CASES:
        ids = tok.encode(text, add_special_tokens=True).ids
        plain = tok.encode(text, add_special_tokens=False).ids
        cases.append({"text": text, "ids": ids, "ids_no_special": plain,
                      "decoded": tok.decode(ids, skip_special_tokens=True),
                      "decoded_with_special": tok.decode(ids, skip_special_tokens=False)})
    chats = []
    for prompt in CHAT_PROMPTS:
        text = render(template, prompt, bos)
        chats.append({"prompt": prompt, "text": text, "ids": tok.encode(text, add_special_tokens=False).ids})
    return {"cases": cases, "chat": chats}


def train_bpe(pattern, normalizer, ignore_merges):
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, min_frequency=1)
    tok.train_from_iterator(training_lines(), trainer)
    return tok


def llama3():
    tok = train_bpe(LLAMA3_PATTERN, None, True)
    # As in the real file, the special tokens follow the learned vocabulary.
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                "<|reserved_special_token_1|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|reserved_special_token_2|>", "<|eot_id|>"]
    tok.add_special_tokens(specials)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A:0",
                                      pair="<|begin_of_text|> $A:0 <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    eot, eos = tok.token_to_id("<|eot_id|>"), tok.token_to_id("<|end_of_text|>")
    data = bpe_fixture(
        "llama3", tok, specials, LLAMA3_TEMPLATE, "<|begin_of_text|>",
        {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "bos_token_id": bos, "eos_token_id": eot},
        {"bos_token_id": bos, "eos_token_id": [eos, eot], "do_sample": True},
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "clean_up_tokenization_spaces": True,
         "model_input_names": ["input_ids", "attention_mask"], "model_max_length": 1000000000000000019884624838656,
         "tokenizer_class": "PreTrainedTokenizerFast"})
    data.update({"bos_id": bos, "eos_ids": [eos, eot], "kind": "bpe"})
    return data


def qwen2():
    tok = train_bpe(QWEN2_PATTERN, normalizers.NFC(), False)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.add_special_tokens(specials)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    eot, im_end = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|im_end|>")
    data = bpe_fixture(
        "qwen2", tok, specials, QWEN2_TEMPLATE, None,
        {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "bos_token_id": eot, "eos_token_id": im_end},
        {"bos_token_id": eot, "eos_token_id": [im_end, eot], "do_sample": True},
        {"add_prefix_space": False, "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
         "clean_up_tokenization_spaces": False, "errors": "replace", "split_special_tokens": False,
         "model_max_length": 32768, "tokenizer_class": "Qwen2Tokenizer"})
    data.update({"bos_id": None, "eos_ids": [im_end, eot], "kind": "bpe"})
    # The same vocabulary behind GPT-2's pre-tokenizer (ByteLevel with its own regex), no normalizer.
    gpt2 = Tokenizer.from_str(tok.to_str())
    gpt2.normalizer = None
    gpt2.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    os.makedirs(os.path.join(OUT, "gpt2"), exist_ok=True)
    gpt2.save(os.path.join(OUT, "gpt2", "tokenizer.json"))
    gpt2_cases = [{"text": t, "ids": gpt2.encode(t).ids} for t in CASES]
    root = json.loads(tok.to_str())
    for a in root["added_tokens"]:
        if a["content"] == "<|im_start|>":
            a["lstrip"] = a["rstrip"] = True
        if a["content"] == "<|im_end|>":
            a["single_word"] = True
    flagged = Tokenizer.from_str(json.dumps(root))
    data["flag_cases"] = [{"text": t, "ids": flagged.encode(t).ids} for t in FLAG_CASES]
    return data, {"cases": gpt2_cases}


GEMMA_USER_SYMBOLS = (["<mask>", "[@BOS@]"] + [f"<unused{i}>" for i in range(100)] +
                      ["<start_of_turn>", "<end_of_turn>"])
# Real Gemma vocabularies also hold user-defined pieces that are ordinary text (HTML tags,
# whitespace runs): added tokens with "special": false, never skipped when decoding.
GEMMA_TEXT_SYMBOLS = ["<h1>", "</h1>", "<table>", "\n\n\n"]


def gemma():
    buf = io.BytesIO()
    # Gemma's trainer settings: BPE, byte fallback, digits split, no dummy prefix, whitespace kept.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_lines()), model_writer=buf, model_type="bpe", vocab_size=VOCAB,
        byte_fallback=True, split_digits=True, add_dummy_prefix=False, remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, normalization_rule_name="identity", character_coverage=0.9995,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", user_defined_symbols=GEMMA_USER_SYMBOLS + GEMMA_TEXT_SYMBOLS, num_threads=1, seed_sentencepiece_size=100000,
        minloglevel=2)
    model = buf.getvalue()
    os.makedirs(os.path.join(OUT, "gemma"), exist_ok=True)
    with open(os.path.join(OUT, "gemma", "tokenizer.model"), "wb") as f:
        f.write(model)
    sp = spm.SentencePieceProcessor(model_proto=model)
    special = {i for i in range(sp.get_piece_size())
               if sp.is_control(i) or sp.is_unknown(i) or sp.id_to_piece(i) in GEMMA_USER_SYMBOLS}
    text_symbols = {sp.piece_to_id(p) for p in GEMMA_TEXT_SYMBOLS}
    # Matched in the text: all added tokens, special or not.
    by_len = sorted((sp.id_to_piece(i) for i in special | text_symbols), key=len, reverse=True)

    # What the model's tokenizer does (transformers' GemmaTokenizer): special pieces written in the
    # text are matched first (leftmost, longest), the text between them goes to sentencepiece.
    def encode(text, add_bos):
        ids, pos, start = ([2] if add_bos else []), 0, 0
        while pos < len(text):
            hit = next((p for p in by_len if text.startswith(p, pos)), None)
            if hit is None:
                pos += 1
                continue
            if start < pos:
                ids += sp.encode(text[start:pos])
            ids.append(sp.piece_to_id(hit))
            pos = start = pos + len(hit)
        if start < len(text):
            ids += sp.encode(text[start:])
        return ids

    def decode(ids, skip_special):
        out, run = [], []
        for i in ids + [None]:
            if i is None or i in special:
                if run:
                    out.append(sp.decode(run))
                    run = []
                if i is not None and not skip_special:
                    out.append(sp.id_to_piece(i))
            else:
                run.append(i)
        return "".join(out)

    cases = []
    for text in CASES:
        ids = encode(text, True)
        cases.append({"text": text, "ids": ids, "ids_no_special": encode(text, False),
                      "decoded": decode(ids, True), "decoded_with_special": decode(ids, False)})
    chats = []
    for prompt in CHAT_PROMPTS:
        text = render(GEMMA_TEMPLATE, prompt, "<bos>")
        chats.append({"prompt": prompt, "text": text, "ids": encode(text, False)})
    sot = sp.piece_to_id("<start_of_turn>")
    eot = sp.piece_to_id("<end_of_turn>")
    write_json("gemma/tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<bos>", "eos_token": "<eos>",
        "pad_token": "<pad>", "unk_token": "<unk>", "chat_template": GEMMA_TEMPLATE,
        "clean_up_tokenization_spaces": False, "spaces_between_special_tokens": False,
        "tokenizer_class": "GemmaTokenizer", "sp_model_kwargs": {},
        "added_tokens_decoder": {str(i): {"content": sp.id_to_piece(i), "lstrip": False, "normalized": False,
                                          "rstrip": False, "single_word": False, "special": i in special}
                                 for i in sorted(special | text_symbols)}})
    write_json("gemma/config.json", {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
                                     "bos_token_id": 2, "eos_token_id": [1, eot], "pad_token_id": 0})
    write_json("gemma/generation_config.json", {"bos_token_id": 2, "eos_token_id": [1, eot], "pad_token_id": 0})
    # Streaming: decoding every prefix of these ids must give the cases' texts piece by piece.
    return {"cases": cases, "chat": chats, "bos_id": 2, "eos_ids": [1, eot], "start_of_turn": sot,
            "kind": "sentencepiece", "vocab_size": sp.get_piece_size()}


def fuzz_seeds():
    # tests/fuzz/fuzz_tokenizer.cpp: a first byte below 0x80 means text, from 0x80 a tokenizer.json.
    os.makedirs(FUZZ_SEEDS, exist_ok=True)
    for i, text in enumerate(["Hello world", CASES[12], CASES[22], CASES[-2], CASES[23]]):
        with open(os.path.join(FUZZ_SEEDS, f"text-{i}"), "wb") as f:
            f.write(b"\x00" + text.encode("utf-8"))
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TRAIN_TEXT.split("\n")[:6], trainers.BpeTrainer(
        vocab_size=290, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.add_special_tokens(["<|begin_of_text|>", "<|im_end|>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))])
    compact = json.dumps(json.loads(tok.to_str()), ensure_ascii=False, separators=(",", ":"))
    with open(os.path.join(FUZZ_SEEDS, "bpe-tiny.json"), "wb") as f:
        f.write(b"\x80" + compact.encode("utf-8"))


def main():
    os.makedirs(OUT, exist_ok=True)
    fuzz_seeds()
    llama = llama3()
    qwen, gpt2 = qwen2()
    expected = {"generator": {"tokenizers": tokenizers.__version__, "sentencepiece": spm.__version__,
                              "seed": SEED},
                "llama3": llama, "qwen2": qwen, "gpt2": gpt2, "gemma": gemma()}
    write_json("expected.json", expected)


if __name__ == "__main__":
    main()
