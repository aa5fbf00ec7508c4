"""Compression: int8 layers, structured pruning, distillation — numbers against references, and the commands."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bigbatch.compress.distill import Distiller, init_from_teacher, soft_target_loss
from bigbatch.compress.prune import _lowest, importance, prune_structured
from bigbatch.compress.quantize import Int8Linear, linear_weight_bytes, quantize_model
from bigbatch.config import ModelConfig
from bigbatch.nn import CausalLM, Seq2Seq, TextClassifier
from bigbatch.nn.generate import generate
from bigbatch.nn.models import attention_layers, build_model
from bigbatch.tasks import get_task
from helpers import reverse_batch, run_cli, sentences, write_jsonl


def test_int8_linear_matches_float_within_quantization_error():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    q = Int8Linear.from_linear(lin, "weight-int8")
    # the stored weight is within half a quantization step of the float one, row by row
    step = lin.weight.abs().amax(dim=1, keepdim=True) / 127
    assert ((q.dequantized() - lin.weight).abs() <= step / 2 + 1e-7).all()
    x = torch.randn(5, 7, 64)
    with torch.no_grad():
        ref, wo = lin(x), q(x)
        dyn = Int8Linear.from_linear(lin, "dynamic-int8")(x)
    torch.testing.assert_close(wo, F.linear(x, q.dequantized(), lin.bias))
    scale = ref.abs().max()
    assert (dyn - ref).abs().max() < 0.05 * scale and (wo - ref).abs().max() < 0.01 * scale
    # the dynamic path really quantizes the activations too (it is not the float product of the int8 weights)
    assert (dyn - wo).abs().max() > 1e-4 * scale
    assert {t.dtype for t in q.state_dict().values()} == {torch.int8, torch.float32}


def test_quantized_classifier_saves_loads_without_pickles_and_agrees(tmp_path):
    from safetensors.torch import load_file

    from bigbatch import load
    from bigbatch.config import Config
    from bigbatch.train.checkpoint import write_weights_run

    torch.manual_seed(0)
    cfg = Config(task="classify", model=ModelConfig(vocab_size=100, d_model=64, n_heads=4, n_layers=2,
                                                    num_classes=5, max_len=32, dropout=0.0))
    model = build_model("classify", cfg.model).eval()
    x = torch.randint(0, 100, (8, 20))
    with torch.no_grad():
        ref = model(x)
    before = linear_weight_bytes(model)
    names = quantize_model(model, "dynamic-int8")
    assert len(names) == 2 * 4 + 1 and before / linear_weight_bytes(model) > 3.5
    import dataclasses

    qcfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, quantized="dynamic-int8", int8_layers=names))
    write_weights_run(tmp_path / "q", model, qcfg, {}, {})
    tensors = load_file(tmp_path / "q" / "checkpoints" / "step_00000000" / "model.safetensors")
    assert tensors["encoder.blocks.0.mlp.fc1.qweight"].dtype == torch.int8
    loaded, lcfg = load(tmp_path / "q")
    assert lcfg.model.quantized == "dynamic-int8" and isinstance(loaded.encoder.blocks[1].attn.in_proj, Int8Linear)
    with torch.no_grad():
        mine, again = model(x), loaded(x)
    torch.testing.assert_close(again, mine, atol=0, rtol=0)  # the same int8 weights, the same kernel
    assert (mine - ref).abs().max() < 0.1 * ref.abs().max()


def test_quantized_translator_decodes_like_the_float_one():
    """Cross-attention has its own q / kv layers, so a Seq2Seq model quantizes whole."""
    torch.manual_seed(0)
    model = Seq2Seq(vocab_size=13, d_model=32, n_heads=4, n_layers=2, max_len=16, pad_id=0).eval()
    b = reverse_batch(4, torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(b["src_ids"], b["tgt_ids"][:, :-1], b["src_mask"])
        quantize_model(model, "dynamic-int8")
        out = model(b["src_ids"], b["tgt_ids"][:, :-1], b["src_mask"])
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()


def test_old_checkpoints_with_fused_cross_attention_load():
    torch.manual_seed(0)
    model = Seq2Seq(vocab_size=13, d_model=32, n_heads=4, n_layers=1, max_len=16, pad_id=0).eval()
    state = model.state_dict()
    old = {}
    for k, v in state.items():  # the layout of earlier versions: one in_proj of q|k|v
        if ".cross_attn.q_proj." in k:
            old[k.replace("q_proj", "in_proj")] = torch.cat([v, state[k.replace("q_proj", "kv_proj")]])
        elif ".cross_attn.kv_proj." not in k:
            old[k] = v
    fresh = Seq2Seq(vocab_size=13, d_model=32, n_heads=4, n_layers=1, max_len=16, pad_id=0).eval()
    fresh.load_state_dict(old)
    b = reverse_batch(3, torch.Generator().manual_seed(1))
    args = (b["src_ids"], b["tgt_ids"][:, :-1], b["src_mask"])
    torch.testing.assert_close(fresh(*args), model(*args))


def test_removing_a_head_equals_zeroing_its_output():
    torch.manual_seed(0)
    for model, call in ((TextClassifier(vocab_size=50, d_model=32, n_heads=4, n_layers=2, num_classes=3).eval(),
                         lambda m: m(torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0)))),
                        (Seq2Seq(vocab_size=13, d_model=32, n_heads=4, n_layers=2, max_len=16, pad_id=0).eval(),
                         lambda m: m(*(lambda b: (b["src_ids"], b["tgt_ids"][:, :-1], b["src_mask"]))(
                             reverse_batch(2, torch.Generator().manual_seed(0)))))):
        drop = {name: [1] if i % 2 == 0 else [0, 3] for i, (name, _) in enumerate(attention_layers(model))}
        hooks = []
        for name, m in attention_layers(model):
            def zero(_, inputs, heads=drop[name]):
                (h,) = inputs
                h = h.clone().view(*h.shape[:2], 4, 8)
                h[:, :, heads] = 0
                return (h.flatten(2),)
            hooks.append(m.out_proj.register_forward_pre_hook(zero))
        with torch.no_grad():
            ref = call(model)
        for h in hooks:
            h.remove()
        for name, m in attention_layers(model):
            m.keep_heads([k for k in range(4) if k not in drop[name]])
        with torch.no_grad():
            torch.testing.assert_close(call(model), ref, atol=1e-6, rtol=1e-5)


def test_pruned_lm_decodes_with_its_cache_like_a_full_forward():
    """Uneven head counts (one layer with none) through the key-value cache."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=20, d_model=32, n_heads=4, n_layers=3, max_len=32, dropout=0.0,
                      layer_heads=[1, 0, 3], layer_d_ff=[7, 128, 30])
    lm = build_model("lm", cfg).eval()
    assert [m.n_heads for _, m in attention_layers(lm)] == [1, 0, 3]
    assert lm.decoder.blocks[0].mlp.fc1.out_features == 7
    prompt = torch.randint(0, 20, (2, 5), generator=torch.Generator().manual_seed(0))
    out = generate(lm, prompt, 6, temperature=0.0)
    with torch.no_grad():
        full = lm(out[:, :-1]).argmax(-1)[:, 4:]
    assert torch.equal(full, out[:, 5:])
    with pytest.raises(ValueError, match="layer_heads has 2 entries, the model has 3"):
        build_model("lm", ModelConfig(vocab_size=20, d_model=32, n_heads=4, n_layers=3, layer_heads=[1, 2]))


def test_head_importance_is_the_gradient_of_a_gate_per_example():
    """Michel et al.: I_h = Σ_x |∂L(x)/∂ξ_h|; checked against one example at a time through explicit gates."""
    torch.manual_seed(0)
    model = TextClassifier(vocab_size=30, d_model=16, n_heads=4, n_layers=2, num_classes=3).double().eval()
    task = get_task("classify")
    ids = torch.randint(1, 30, (6, 9))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool), "labels": torch.arange(6) % 3}
    heads, ffn = importance(model, task, [batch])
    raw = torch.zeros(2, 4, dtype=torch.float64)
    for i in range(6):
        gates = [torch.ones(4, dtype=torch.float64, requires_grad=True) for _ in range(2)]
        hooks = [b.attn.out_proj.register_forward_pre_hook(
            lambda _, inp, g=g: ((inp[0].view(*inp[0].shape[:2], 4, 4) * g[:, None]).flatten(2),))
            for b, g in zip(model.encoder.blocks, gates)]
        one = {k: v[i : i + 1] for k, v in batch.items()}
        loss, n, _ = task.objective(model, one)
        grads = torch.autograd.grad(loss / 6, gates)  # the batch's mean loss: each example weighs 1/6
        raw += torch.stack(grads).abs()
        for h in hooks:
            h.remove()
    expected = raw / raw.norm(dim=1, keepdim=True)
    torch.testing.assert_close(torch.stack(heads).double(), expected, rtol=1e-4, atol=1e-6)
    assert len(ffn) == 2 and ffn[0].shape == (64,)
    # a hidden unit whose output weights are zero has no effect, so no importance
    with torch.no_grad():
        model.encoder.blocks[0].mlp.fc2.weight[:, 5] = 0
    _, ffn = importance(model, task, [batch])
    assert ffn[0][5] == 0 and (ffn[0] > 0).sum() == 63


def test_a_dead_head_is_pruned_first_and_the_model_shrinks():
    torch.manual_seed(0)
    model = TextClassifier(vocab_size=30, d_model=16, n_heads=4, n_layers=2, num_classes=3).eval()
    with torch.no_grad():
        model.encoder.blocks[1].attn.out_proj.weight[:, 8:12] = 0  # head 2 of layer 1 contributes nothing
    ids = torch.randint(1, 30, (16, 9))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool), "labels": torch.arange(16) % 3}
    heads, _ = importance(model, get_task("classify"), [batch])
    assert heads[1][2] == 0 and heads[0].min() > 0
    sizes = prune_structured(model, get_task("classify"), [batch], heads=0.5, ffn=0.25, rounds=2)
    assert sizes["heads_removed"] == 4 and sum(sizes["layer_heads"]) == 4
    assert sum(sizes["layer_d_ff"]) == 96 and model(ids).shape == (16, 3)
    assert _lowest([torch.tensor([0.1, 0.5]), torch.tensor([0.05])], 2, keep_one=True) == [[0], []]


def test_magnitude_pruning_zeroes_the_smallest_weights_over_all_layers():
    from bigbatch.compress.prune import prune_unstructured

    torch.manual_seed(0)
    model = TextClassifier(vocab_size=30, d_model=16, n_heads=2, n_layers=2, num_classes=3)
    weights = torch.cat([m.weight.detach().abs().flatten() for m in model.modules() if isinstance(m, torch.nn.Linear)])
    cut = weights.kthvalue(int(0.4 * weights.numel())).values
    prune_unstructured(model, 0.4)
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            w = m.weight.detach()
            assert (w[w != 0].abs() >= cut).all()


def test_a_layer_pruned_to_no_heads_quantizes_and_runs():
    torch.manual_seed(0)
    model = build_model("classify", ModelConfig(vocab_size=30, d_model=16, n_heads=2, n_layers=2, num_classes=3,
                                                layer_heads=[0, 2])).eval()
    names = quantize_model(model, "dynamic-int8")
    assert "encoder.blocks.0.attn.in_proj" not in names and "encoder.blocks.1.attn.in_proj" in names
    with torch.no_grad():
        assert model(torch.randint(0, 30, (2, 5))).shape == (2, 3)


def test_a_resumed_distilled_run_keeps_its_teacher():
    from bigbatch.config import Config, DistillConfig
    from bigbatch.train.defaults import fill_unset_from

    saved = Config(distill=DistillConfig(teacher="/runs/t", temperature=3.0))
    assert fill_unset_from(saved, Config()).distill.teacher == "/runs/t"


def test_soft_target_loss_is_kl_at_temperature_times_t_squared():
    torch.manual_seed(0)
    s, t = torch.randn(10, 7), torch.randn(10, 7)
    ref = F.kl_div(F.log_softmax(s / 3, -1), F.log_softmax(t / 3, -1), log_target=True, reduction="sum") * 9
    torch.testing.assert_close(soft_target_loss(s, t, 3.0), ref)
    assert float(soft_target_loss(s, s, 2.0)) == pytest.approx(0.0, abs=1e-6)
    keep = torch.arange(10) < 4
    torch.testing.assert_close(soft_target_loss(s, t, 3.0, keep), soft_target_loss(s[:4], t[:4], 3.0))


def test_distiller_mixes_hard_and_soft_losses_over_real_targets_only():
    torch.manual_seed(0)
    task = get_task("translate")
    student = Seq2Seq(vocab_size=13, d_model=32, n_heads=4, n_layers=1, max_len=16, pad_id=0).eval()
    teacher = Seq2Seq(vocab_size=13, d_model=32, n_heads=4, n_layers=2, max_len=16, pad_id=0).eval()
    b = reverse_batch(4, torch.Generator().manual_seed(0))
    hard, n, _ = task.objective(student, b)
    loss, n2, logs = Distiller(task, teacher, 2.0, 0.25)(student, b)
    s = student(b["src_ids"], b["tgt_ids"][:, :-1], b["src_mask"])
    t = teacher(b["src_ids"], b["tgt_ids"][:, :-1], b["src_mask"])
    real = b["tgt_mask"][:, 1:]
    soft = soft_target_loss(s[real], t[real], 2.0)
    assert int(n2) == int(n) == int(real.sum())
    torch.testing.assert_close(loss, 0.75 * hard + 0.25 * soft)
    torch.testing.assert_close(logs["distill"], soft)
    # alpha 0: the plain objective; every teacher parameter frozen
    torch.testing.assert_close(Distiller(task, teacher, 2.0, 0.0)(student, b)[0], hard)
    assert not any(p.requires_grad for p in teacher.parameters())


def test_student_starts_from_every_other_teacher_layer():
    torch.manual_seed(0)
    teacher = CausalLM(vocab_size=20, d_model=16, n_heads=2, n_layers=4)
    student = CausalLM(vocab_size=20, d_model=16, n_heads=2, n_layers=2)
    assert "block i from the teacher's block 2i" in init_from_teacher(student, teacher)
    for i in range(2):
        assert torch.equal(student.decoder.blocks[i].mlp.fc1.weight, teacher.decoder.blocks[2 * i].mlp.fc1.weight)
    assert torch.equal(student.embed.tok.weight, teacher.embed.tok.weight)
    narrow = CausalLM(vocab_size=20, d_model=8, n_heads=2, n_layers=2)
    before = narrow.embed.tok.weight.clone()
    assert "random weights" in init_from_teacher(narrow, teacher)
    assert torch.equal(narrow.embed.tok.weight, before)


# --------------------------------------------------------------------------- the commands


@pytest.fixture(scope="module")
def topic_run(tmp_path_factory):
    """A small classifier of product reviews' topics, trained from CSV with other column names."""
    d = tmp_path_factory.mktemp("compress")
    rng = np.random.default_rng(3)
    vocab = {"kitchen": "pan knife oven spoon kettle".split(), "garden": "rake hose seed soil shovel".split(),
             "car": "tyre brake engine wheel clutch".split()}
    filler = "good bad fine great poor cheap nice it was very the and".split()
    lines = ["review,topic"]
    for _ in range(1200):
        topic = str(rng.choice(list(vocab)))
        words = list(rng.choice(filler, size=rng.integers(3, 12))) + list(rng.choice(vocab[topic], size=2))
        rng.shuffle(words)
        lines.append(f"{' '.join(words)},{topic}")
    (d / "reviews.csv").write_text("\n".join(lines) + "\n")
    run = d / "run"
    run_cli("train", "--run-dir", run, "--no-progress", "--set", "task=classify",
            "--set", f"data.source={d / 'reviews.csv'}", "--set", "data.text_field=review",
            "--set", "data.label_field=topic", "--set", "model.d_model=64", "--set", "model.n_heads=4",
            "--set", "model.n_layers=2", "--set", "model.max_len=32", "--set", "train.max_steps=150",
            "--set", "train.global_batch_size=32", "--set", "train.eval_every=0", "--set", "train.save_every=0",
            "--set", "optim.lr=3e-3", "--set", "optim.warmup_steps=10", "--set", "train.baseline=false")
    return d, run


@pytest.mark.slow  # ~100 s on 2 cores: `make test-slow`
def test_quantize_prune_distill_commands_give_runs_every_command_accepts(topic_run):
    d, run = topic_run
    q = d / "q"
    proc = run_cli("compress", "quantize", run, "--out", q, "--json", "--eval-examples", "200")
    summary = json.loads(proc.stdout)
    int8, fp = summary["measured"][1], summary["measured"][0]
    assert summary["linear_bytes_before"] / summary["linear_bytes_after"] > 3.5
    assert abs(int8["accuracy"] - fp["accuracy"]) <= 0.02 and fp["accuracy"] > 0.9
    assert json.loads(run_cli("eval", q, "--json", "--no-baseline").stdout)["accuracy"] > 0.9
    assert run_cli("classify", q, "the pan and the knife were great").stdout.split()[0] == "kitchen"
    again = run_cli("compress", "quantize", q, "--out", d / "qq", check=False)
    assert again.returncode == 2 and "already quantized" in again.stderr

    p = d / "p"
    proc = run_cli("compress", "prune", run, "--heads", "0.5", "--ffn", "0.3", "--finetune-steps", "20",
                   "--out", p, "--json", "--eval-examples", "200", "--no-progress")
    summary = json.loads(proc.stdout)
    assert summary["heads_removed"] == 4 and sum(summary["layer_heads"]) == 4
    assert summary["ffn_removed"] == round(0.3 * 2 * 256)
    tuned = summary["measured"][2]
    assert tuned["parameters"] < summary["measured"][0]["parameters"] and tuned["accuracy"] > 0.8
    for where in (p, p / "pruned"):
        assert json.loads(run_cli("eval", where, "--json", "--no-baseline").stdout)["examples"] > 0
    # pruned, then quantized
    run_cli("compress", "quantize", p, "--out", d / "pq", "--no-measure")
    assert run_cli("classify", d / "pq", "rake and hose and soil").stdout.split()[0] == "garden"

    u = d / "u"
    summary = json.loads(run_cli("compress", "prune", run, "--unstructured", "0.5", "--out", u, "--json",
                                 "--no-measure").stdout)
    assert summary["zeroed"] >= 0.5 * summary["of"]

    s = d / "student"
    proc = run_cli("compress", "distill", "--teacher", run, "--out", s, "--json", "--no-progress",
                   "--set", "train.max_steps=30")
    summary = json.loads(proc.stdout)
    assert summary["valid_accuracy"] > 0.5
    cfg = (s / "config.yaml").read_text()
    assert "teacher: " in cfg and "n_layers: 1" in cfg
    assert "the student starts from the teacher's weights" in proc.stderr and "distillation: teacher" in proc.stderr


@pytest.mark.slow  # trains the topic_run fixture (~35 s)
def test_compress_bad_input_is_one_line_exit_2(topic_run, tmp_path):
    d, run = topic_run
    cases = [
        (["compress", "quantize", tmp_path, "--out", tmp_path / "o"], "not a checkpoint"),
        (["compress", "prune", run, "--heads", "1.0", "--out", tmp_path / "o"], "--heads 1.0: expected a fraction"),
        (["compress", "prune", run, "--ffn", "-0.1", "--out", tmp_path / "o"], "--ffn -0.1: expected a fraction"),
        (["compress", "prune", run, "--out", tmp_path / "o"], "nothing to prune"),
        (["compress", "quantize", run, "--out", run], "already exists and is not empty"),
    ]
    lm = tmp_path / "lm"
    write_jsonl(tmp_path / "t.jsonl", [{"text": t} for t in sentences(300)])
    for args, message in cases:
        proc = run_cli(*args, check=False)
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, \
            (args, proc.stderr)
    run_cli("train", "--run-dir", lm, "--no-progress", "--set", f"data.source={tmp_path / 't.jsonl'}",
            "--set", "model.d_model=32", "--set", "model.n_layers=1", "--set", "train.max_steps=2",
            "--set", "data.seq_len=16", "--set", "train.baseline=false")
    proc = run_cli("train", "--run-dir", tmp_path / "x", "--no-progress", "--set", "task=classify",
                   "--set", f"data.source={d / 'reviews.csv'}", "--set", "data.text_field=review",
                   "--set", "data.label_field=topic", "--set", f"distill.teacher={lm}", "--set", "train.max_steps=2",
                   check=False)
    assert proc.returncode == 2 and "a task=lm run; the student has task=classify" in proc.stderr, proc.stderr
