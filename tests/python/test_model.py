"""Models and contexts through Python: golden-fixture parity, array contracts, state, errors."""

import numpy as np
import pytest

import dsv4
from conftest import DATA, TINY_MODEL


def test_info_and_layers(model):
    info = model.info
    assert (info["n_layers"], info["dim"], info["n_routed_experts"], info["vocab_size"]) == (4, 256, 8, 2048)
    assert info["n_window_layers"] + info["n_csa_layers"] + info["n_hca_layers"] == info["n_layers"]
    kinds = [model.layer_info(i)["kind"] for i in range(info["n_layers"])]
    ratios = [model.layer_info(i)["compress_ratio"] for i in range(info["n_layers"])]
    assert all({"window": 0, "csa": 4, "hca": 128}[k] == r for k, r in zip(kinds, ratios))
    assert model.tokenizer is None  # the fixture directory has no tokenizer.json
    with pytest.raises(dsv4.InvalidArgumentError):
        model.layer_info(99)


@pytest.mark.parametrize("case_name", ["len1", "len5", "len130"])
def test_logits_match_the_golden_reference(model, golden, golden_tensors, case_name):
    """Teacher-forced rows of the reference run (prefill, then one token per step) within the fixture's
    tolerances for the case's class, as `dsv4 eval-golden` checks them."""
    case = next(c for c in golden["cases"] if c["name"] == case_name)
    tol = golden["tolerance"]["classes"][case["class"]]
    want = golden_tensors[f"{case_name}.teacher.logits"]
    ctx = dsv4.Context(model, n_ctx=512)
    rows = [ctx.eval(case["prompt"])]
    for t in case["teacher_tokens"][: case["n_decode"]]:
        rows.append(ctx.eval([t]))
    got = np.stack(rows)
    assert got.shape == want.shape
    err = got.astype(np.float64) - want
    assert np.abs(err).max() <= tol["max_abs_logit_err"]
    assert np.sqrt(np.mean(err**2)) <= tol["max_rms_logit_err"]


def test_logit_arrays_have_documented_dtype_and_shape(model):
    ctx = dsv4.Context(model, n_ctx=64)
    last = ctx.eval([0, 194, 916])
    assert last.dtype == np.float32 and last.shape == (2048,) and last.flags.c_contiguous and last.flags.owndata
    assert np.array_equal(ctx.logits(), last)
    ctx2 = dsv4.Context(model, n_ctx=64)
    every = ctx2.eval(np.array([0, 194, 916], dtype=np.int64), all_logits=True)
    assert every.dtype == np.float32 and every.shape == (3, 2048)
    assert np.array_equal(every[-1], last)  # scoring rows: the last equals the one-output evaluation
    assert np.array_equal(ctx2.logits(0), every[0])
    last[:] = 0  # a copy: the context's outputs are untouched
    assert not np.array_equal(ctx.logits(), last)
    for bad in ([[1, 2]], [0.5, 1.5]):
        with pytest.raises(dsv4.InvalidArgumentError):
            ctx.eval(bad)
    with pytest.raises(dsv4.InvalidArgumentError):
        ctx.eval([])


def test_chunked_evaluation_equals_one_shot(model):
    prompt = list(range(1, 140))
    one = dsv4.Context(model, n_ctx=256)
    want = one.eval(prompt)
    chunked = dsv4.Context(model, n_ctx=256)
    for a in range(0, len(prompt), 50):
        got = chunked.eval(prompt[a : a + 50])
    assert np.array_equal(got, want)
    assert chunked.seq_length() == len(prompt) == len(chunked.tokens())


def test_state_round_trip_fork_and_truncate(model, tmp_path):
    ctx = dsv4.Context(model, n_ctx=256, n_seq_max=2)
    ctx.eval(list(range(1, 40)))
    blob = ctx.save_state()
    assert isinstance(blob, bytes) and len(blob) > 0
    after = ctx.eval([7])
    ctx.load_state(blob)
    assert ctx.seq_length() == 39 and ctx.tokens() is None  # tokens unknown after a load
    assert np.array_equal(ctx.eval([7]), after)
    ctx.save_state_file(str(tmp_path / "s.bin"))
    ctx.fork(0, 1)
    assert ctx.seq_length(1) == 40
    assert np.array_equal(ctx.eval([9], seq=1), ctx.eval([9], seq=0))
    ctx.truncate(39)
    assert ctx.seq_length() == 39
    other = dsv4.Context(model, n_ctx=256)
    other.load_state_file(str(tmp_path / "s.bin"))
    assert other.seq_length() == 40
    with pytest.raises(dsv4.FormatError):
        other.load_state(blob[: len(blob) // 2])
    assert other.seq_length() == 40  # unchanged by the failed load
    stats = ctx.memory_stats()
    assert stats["n_sequences"] == 2 and stats["cache_bytes"] > 0 and stats["bytes_per_1024_tokens"] > 0
    assert stats["scratch_bytes"] >= 0


def test_weights_in_the_checkpoint_layout_give_the_same_logits(model):
    """repack_weights=False computes from the checkpoint's bytes in place: only fp32 summation order differs."""
    in_place = dsv4.Model(TINY_MODEL, repack_weights=False)
    tokens = [0, 194, 916, 623, 292, 17]
    a = dsv4.Context(model, n_ctx=64).eval(tokens)
    b = dsv4.Context(in_place, n_ctx=64).eval(tokens)
    assert np.abs(a.astype(np.float64) - b).max() < 0.25


def test_errors_carry_status_and_message(model, tmp_path):
    with pytest.raises(dsv4.IOError) as e:
        dsv4.Model(str(tmp_path / "missing"))
    assert e.value.status_name.startswith("DSV4_ERR_IO") and "missing" in str(e.value)
    assert isinstance(e.value, OSError) and isinstance(e.value, dsv4.Error)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{ not json")
    with pytest.raises(dsv4.FormatError) as e:
        dsv4.Model(str(bad))
    assert "config.json" in str(e.value)
    ctx = dsv4.Context(model, n_ctx=8)
    with pytest.raises(dsv4.InvalidTokenError):
        ctx.eval([5000])
    with pytest.raises(dsv4.ContextFullError):
        ctx.eval(list(range(9)))
    with pytest.raises(dsv4.InvalidArgumentError) as e:
        ctx.eval([1], seq=3)
    assert e.value.status_name == "DSV4_ERR_INVALID_ARGUMENT_SEQUENCE"
    assert ctx.seq_length() == 0  # every failure left the sequence as it was
    with pytest.raises(dsv4.InvalidArgumentError):
        dsv4.Context(model, n_ctx=-1)


def test_progress_callback_reports_and_cancels():
    seen = []
    dsv4.Model(str(TINY_MODEL), progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1] > 0
    with pytest.raises(dsv4.CancelledError):
        dsv4.Model(str(TINY_MODEL), progress=lambda done, total: False)
