#!/usr/bin/env python3
"""A small tokenizer.json shaped like Llama-2's and Mistral's (SentencePiece BPE converted by
transformers): BPE with byte fallback and `fuse_unk`, `<unk>`, `<s>`, `</s>`, the 256 `<0xNN>`
byte tokens at ids 3-258, a normalizer that prepends `▁` and turns spaces into `▁`, no
pre-tokenizer, the Replace/ByteFallback/Fuse/Strip decoder. Its merges are learnt from the
sample data (words kept apart, as SentencePiece does), so the export's `llama` path is checked on
a real merge table; characters outside the sample data fall back to bytes.

Writes tests/fixtures/data/spm-bpe/{tokenizer.json, tokenizer_config.json}.

    .venv/bin/python scripts/make_spm_tokenizer_fixture.py
"""
import json
import pathlib

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "data" / "spm-bpe"
SPECIAL = ["<unk>", "<s>", "</s>"]
BYTES = [f"<0x{b:02X}>" for b in range(256)]


def sample_text():
    for name in ("data/sft/train.jsonl", "data/dpo/train.jsonl"):
        for line in open(ROOT / name):
            row = json.loads(line)
            for key in ("messages", "prompt", "chosen", "rejected"):
                for m in row.get(key, []) if isinstance(row.get(key), list) else []:
                    yield m["content"]


def main():
    # Learn merges word by word (SentencePiece never merges across a space).
    learner = Tokenizer(models.BPE(unk_token="<unk>"))
    learner.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    learner.pre_tokenizer = pre_tokenizers.Split(Regex("▁[^▁]*|[^▁]+"), behavior="isolated")
    learner.train_from_iterator(sample_text(), trainers.BpeTrainer(vocab_size=700, show_progress=False))
    learnt = json.loads(learner.to_str())["model"]
    pieces = sorted(learnt["vocab"], key=learnt["vocab"].get)
    vocab = {t: i for i, t in enumerate(SPECIAL + BYTES)}
    for p in pieces:
        if p not in vocab and p not in SPECIAL:
            vocab[p] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learnt["merges"]]

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True,
                               fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    from tokenizers import AddedToken
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIAL])
    OUT.mkdir(parents=True, exist_ok=True)
    tok.save(str(OUT / "tokenizer.json"))
    config = {
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
        "add_eos_token": False, "tokenizer_class": "LlamaTokenizerFast",
        "chat_template": "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
                         "{{ '[INST] ' + m['content'] + ' [/INST]' }}{% else %}{{ m['content'] + eos_token }}"
                         "{% endif %}{% endfor %}",
    }
    json.dump(config, open(OUT / "tokenizer_config.json", "w"), indent=1)
    print(len(vocab), "tokens,", len(merges), "merges;", tok.encode("The capital of Slovenia is Ljubljana. é🙂").tokens)


if __name__ == "__main__":
    main()
