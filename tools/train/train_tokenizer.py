"""Trains the embedded model's byte-level BPE tokenizer with Hugging Face `tokenizers` and writes a
tokenizer.json of DeepSeek-V4's kind: the same normalizer, pre-tokenizer, post-processor and decoder as
the real V4 tokenizer.json, and the V4 special tokens (flags copied from it) at the lowest ids.

    python3 tools/train/train_tokenizer.py TRAIN_JSONL V4_TOKENIZER_JSON VOCAB_SIZE OUT_JSON
"""
import json
import sys

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

# BOS 0 and EOS 1 as in V4 (config bos/eos ids), then the tokens the chat format writes.
SPECIALS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", "<｜User｜>", "<｜Assistant｜>",
            "<think>", "</think>", "｜DSML｜", "<｜latest_reminder｜>", "<｜action｜>", "<｜query｜>", "<｜authority｜>",
            "<｜domain｜>", "<｜title｜>", "<｜extracted_url｜>", "<｜read_url｜>"]


def pre_tokenizer_of(v4):
    """The V4 pre-tokenizer rebuilt through the Python API (trainer needs the object, not the JSON)."""
    steps = []
    for p in v4["pre_tokenizer"]["pretokenizers"]:
        if p["type"] == "Split":
            steps.append(pre_tokenizers.Split(Regex(p["pattern"]["Regex"]), p["behavior"].lower(), invert=p["invert"]))
        else:
            steps.append(pre_tokenizers.ByteLevel(add_prefix_space=p["add_prefix_space"], use_regex=p["use_regex"]))
    return pre_tokenizers.Sequence(steps)


def main(train_jsonl, v4_path, vocab_size, out_path):
    v4 = json.load(open(v4_path, encoding="utf-8"))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer_of(v4)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=int(vocab_size), special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())

    def texts():
        with open(train_jsonl, encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)["text"]

    tok.train_from_iterator(texts(), trainer)
    out = json.loads(tok.to_str())
    for key in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
        out[key] = v4[key]
    flags = {a["content"]: a for a in v4["added_tokens"]}
    for a in out["added_tokens"]:
        for k in ("special", "normalized", "lstrip", "rstrip", "single_word"):
            a[k] = flags[a["content"]][k]
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=None)
    check = Tokenizer.from_file(out_path)
    sample = "<｜begin▁of▁sentence｜><｜User｜>What is 12 times 7?<｜Assistant｜></think>84.<｜end▁of▁sentence｜>"
    assert check.decode(check.encode(sample).ids, skip_special_tokens=False) == sample
    print(f"tokenizer: {check.get_vocab_size()} tokens -> {out_path}")


if __name__ == "__main__":
    main(*sys.argv[1:5])
