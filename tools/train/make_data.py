"""Builds the embedded model's training text: State of the Union prose plus synthetic conversations rendered
in the DeepSeek-V4 chat format by dsv4's own encoder (`dsv4.chat_encode`).

    build/venv/bin/python tools/train/make_data.py build/train-data/sotu/package/data build/train-data

Writes train.jsonl and heldout.jsonl: one {"kind": "prose" | "chat", "text": ...} per document. Held out:
every 20th address (by year order) and every 20th conversation. Deterministic (fixed seed).
"""
import json
import random
import sys
from pathlib import Path

import dsv4

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"

# The toy tools the conversations use; the tests read the same file.
TOOLS = json.loads((Path(__file__).resolve().parent / "toy_tools.json").read_text())

# (from, to, factor, plural from, plural to)
UNITS = [("mile", "kilometer", 1.609344, "miles", "kilometers"), ("kilometer", "mile", 0.621371, "kilometers", "miles"),
         ("pound", "kilogram", 0.45359237, "pounds", "kilograms"), ("kilogram", "pound", 2.204623, "kilograms", "pounds"),
         ("foot", "meter", 0.3048, "feet", "meters"), ("meter", "foot", 3.28084, "meters", "feet"),
         ("gallon", "liter", 3.785412, "gallons", "liters"), ("inch", "centimeter", 2.54, "inches", "centimeters")]
OPS = [("+", "plus", lambda a, b: a + b), ("-", "minus", lambda a, b: a - b), ("*", "times", lambda a, b: a * b)]
GREETINGS = ["Hello", "Hi", "Hello there", "Good morning", "Good evening", "Hi, who are you?", "Hey"]
GREETING_REPLIES = ["Hello! How can I help you today?", "Hi! What would you like to know?",
                    "Hello! I am a small assistant. Ask me about the State of the Union addresses, or give me a sum.",
                    "Good to see you. How can I help?"]


def fmt_number(x):
    return f"{x:.2f}".rstrip("0").rstrip(".") if isinstance(x, float) else str(x)


class Conversations:
    def __init__(self, speeches, rng):
        self.speeches, self.rng = speeches, rng

    def greeting(self):
        r = self.rng
        return [{"role": "user", "content": r.choice(GREETINGS)},
                {"role": "assistant", "content": r.choice(GREETING_REPLIES)}], False

    def who_spoke(self, thinking):
        r = self.rng
        s = r.choice(self.speeches)
        q = r.choice(["Who delivered the State of the Union address in {y}?", "Who gave the {y} State of the Union?",
                      "Which president spoke to Congress in {y}?"]).format(y=s["year"])
        answer = f"{s['name']} delivered the {s['year']} State of the Union address."
        msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": answer}]
        if thinking:
            msgs[1]["reasoning_content"] = f"The address of {s['year']} was given by {s['name']}."
        if r.random() < 0.5:
            msgs += [{"role": "user", "content": "Which party did he belong to?"},
                     {"role": "assistant", "content": f"{s['name']} was a member of the {s['party']} Party."}]
            if thinking:
                msgs[3]["reasoning_content"] = f"{s['name']} belonged to the {s['party']} Party."
        return msgs, thinking

    def continue_speech(self):
        r = self.rng
        s = r.choice(self.speeches)
        sentences = [x.strip() + "." for x in s["text"].split(". ") if 20 < len(x) < 300]
        if len(sentences) < 4:
            return self.greeting()
        i = r.randrange(len(sentences) - 3)
        return [{"role": "user", "content": f"Continue this passage from {s['name']} ({s['year']}): {sentences[i]}"},
                {"role": "assistant", "content": " ".join(sentences[i + 1:i + 3])}], False

    def arithmetic(self, thinking):
        r = self.rng
        sym, word, fn = r.choice(OPS)
        a, b = r.randint(2, 99), r.randint(2, 99)
        c = fn(a, b)
        msgs = [{"role": "user", "content": r.choice(["What is {a} {w} {b}?", "Compute {a} {s} {b}.",
                                                      "How much is {a} {w} {b}?"]).format(a=a, b=b, w=word, s=sym)},
                {"role": "assistant", "content": f"{a} {word} {b} is {c}."}]
        if thinking:
            msgs[1]["reasoning_content"] = f"{a} {sym} {b} = {c}."
        return msgs, thinking

    def tool_call(self, thinking):
        r = self.rng
        system = {"role": "system", "content": "You are a helpful assistant with a calculator and a unit converter.",
                  "tools": TOOLS}
        if r.random() < 0.5:
            sym, word, fn = r.choice(OPS)
            a, b = r.randint(100, 9999), r.randint(10, 999)
            c = fn(a, b)
            expr = f"{a} {sym} {b}"
            question = r.choice(["What is {a} {w} {b}?", "Please calculate {e}.", "Can you work out {e}?"]).format(
                a=a, b=b, w=word, e=expr)
            call = {"name": "calculator", "arguments": json.dumps({"expression": expr})}
            result, answer = str(c), f"{expr} = {c}."
            reasoning = "The user wants an exact product or sum; I will use the calculator."
        else:
            frm, to, factor, frm_pl, to_pl = r.choice(UNITS)
            v = r.choice([r.randint(1, 500), round(r.uniform(0.5, 100), 1)])
            out = round(v * factor, 2)
            question = r.choice(["Convert {v} {f} to {t}.", "How many {t} is {v} {f}?",
                                 "What is {v} {f} in {t}?"]).format(v=fmt_number(v), f=frm_pl, t=to_pl)
            call = {"name": "convert_units", "arguments": json.dumps({"value": v, "from_unit": frm, "to_unit": to})}
            result = json.dumps({"value": out, "unit": to})
            answer = f"{fmt_number(v)} {frm_pl} is {fmt_number(out)} {to_pl}."
            reasoning = f"I should convert {frm_pl} to {to_pl} with the unit converter."
        first = {"role": "assistant", "content": "",
                 "tool_calls": [{"id": "call_1", "type": "function", "function": call}]}
        final = {"role": "assistant", "content": answer}
        if thinking:
            first["reasoning_content"] = reasoning
            final["reasoning_content"] = "The tool returned the result."
        return [system, {"role": "user", "content": question}, first,
                {"role": "tool", "tool_call_id": "call_1", "content": result}, final], thinking

    def sample(self):
        r = self.rng
        thinking = r.random() < 0.4
        kind = r.random()
        if kind < 0.08:
            return self.greeting()
        if kind < 0.3:
            return self.who_spoke(thinking)
        if kind < 0.45:
            return self.continue_speech()
        if kind < 0.65:
            return self.arithmetic(thinking)
        return self.tool_call(thinking)


def main(sotu_dir, out_dir, n_conversations=12000):
    sotu_dir, out_dir = Path(sotu_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    speeches = [json.loads(p.read_text()) for p in sorted(sotu_dir.glob("*.json"))]
    held_years = {s["year"] for i, s in enumerate(speeches) if i % 20 == 10}
    train_speeches = [s for s in speeches if s["year"] not in held_years]
    docs = {"train": [], "heldout": []}
    for s in speeches:
        split = "heldout" if s["year"] in held_years else "train"
        docs[split].append({"kind": "prose", "text": BOS + s["text"].strip() + EOS})
    rng = random.Random(20261127)
    gen = Conversations(train_speeches, rng)
    for i in range(n_conversations):
        messages, thinking = gen.sample()
        text = dsv4.chat_encode(messages, thinking=thinking)
        docs["heldout" if i % 20 == 7 else "train"].append({"kind": "chat", "text": text})
    prompts = [
        {"name": "prose_union", "text": "The State of the Union is"},
        {"name": "prose_fellow", "text": BOS + "Mr. Speaker, Mr. Vice President, Members of the Congress, my fellow Americans: Tonight"},
        {"name": "prose_economy", "text": BOS + "The economy of our country"},
        {"name": "prose_peace", "text": "We seek peace and"},
        {"name": "chat_sum", "text": dsv4.chat_encode([{"role": "user", "content": "What is 23 plus 19?"}])},
        {"name": "chat_who", "text": dsv4.chat_encode(
            [{"role": "user", "content": "Who delivered the State of the Union address in 1962?"}], thinking=True)},
        {"name": "chat_tool", "text": dsv4.chat_encode(
            [{"role": "system", "content": "You are a helpful assistant with a calculator and a unit converter.",
              "tools": TOOLS}, {"role": "user", "content": "How many kilometers is 26 miles?"}], thinking=True)},
    ]
    (out_dir / "prompts.json").write_text(json.dumps(prompts, ensure_ascii=False, indent=1) + "\n")
    for split, items in docs.items():
        with open(out_dir / f"{split}.jsonl", "w") as f:
            for d in items:
                f.write(json.dumps(d, ensure_ascii=False) + "\n")
        chars = sum(len(d["text"]) for d in items)
        print(f"{split}: {len(items)} documents, {chars / 1e6:.2f} M characters")


if __name__ == "__main__":
    main(*sys.argv[1:3])
