"""Checks v4model against the official reference's golden fixture (logits and layer-isolated replay).

    /usr/bin/python3 tools/train/check_fixture.py tests/data/tiny-flash

Prints, per case, the worst |delta| of each layer tensor and of the logits, against the fixture's own
tolerances; exits non-zero when a logit tolerance is exceeded (a case's RMS against its class's RMS bound). The model here runs whole sequences at once,
so layer tensors are compared at every position of the teacher-forced run.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import checkpoint  # noqa: E402
import safetensors_io as st  # noqa: E402
import v4model  # noqa: E402


def as_f32(entry):
    dtype, raw = entry
    return st.bf16_to_f32(raw) if dtype == "BF16" else raw.astype(np.float32)


def main(fixture):
    fixture = Path(fixture)
    torch.set_grad_enabled(False)
    model, _ = checkpoint.load(fixture / "model")
    model.eval()
    num = v4model.Numerics.reference()
    golden = json.loads((fixture / "golden.json").read_text())
    logits_golden = st.read(fixture / "golden.safetensors")
    layers = st.read(fixture / "layers.safetensors")
    ok = True

    for case in golden["layer_replay"]["cases"]:
        name = case["name"]
        tokens = torch.from_numpy(layers[f"{name}.tokens"][1].astype(np.int64))[None]
        positions = torch.arange(tokens.shape[1])
        for l, block in enumerate(model.layers):
            h_in = torch.from_numpy(as_f32(layers[f"{name}.h.{l}"]))[None]
            tr = {}
            h_out, _ = block(h_in, tokens, positions, num, tr)
            tr = {k: v[0] for k, v in tr.items()}
            tr["h_out"] = h_out[0]
            worst = {}
            for key, ref_key in (("h_mid", f"{name}.L{l}.h_mid"), ("attn_out", f"{name}.L{l}.attn_out"),
                                 ("ffn_out", f"{name}.L{l}.ffn_out"), ("h_out", f"{name}.h.{l + 1}")):
                ref = as_f32(layers[ref_key])
                worst[key] = float(np.abs(tr[key].numpy() - ref).max())
            print(f"{name} layer {l}: " + "  ".join(f"{k} {v:.4f}" for k, v in worst.items()))

    classes = golden["tolerance"]["classes"]
    for case in golden["cases"]:
        name = case["name"]
        tol = classes[case["class"]]
        prompt = case["prompt"]
        fed = case["teacher_tokens"][:case["n_decode"]]
        ids = torch.tensor(prompt + fed)[None]
        logits, _ = model(ids, num)
        mine = logits[0, len(prompt) - 1:].numpy()
        ref = logits_golden[f"{name}.teacher.logits"][1]
        d = np.abs(mine - ref)
        rms = float(np.sqrt((d ** 2).mean()))
        bad = d.max() > tol["max_abs_logit_err"] or rms > tol["max_rms_logit_err"]
        ok &= not bad
        print(f"logits {name} ({case['class']}): max|d| {d.max():.3f} (tol {tol['max_abs_logit_err']}), "
              f"rms {rms:.4f} (class tol {tol['max_rms_logit_err']}){'  FAIL' if bad else ''}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
