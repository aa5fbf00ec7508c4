"""Tokenizers of Hugging Face checkpoints: read into one tokenizer.json, written back with a tokenizer_config.json
that ``transformers.AutoTokenizer`` reads.

A checkpoint's tokenizer.json is taken as it is. Without one: GPT-2's vocab.json + merges.txt become its byte-level
BPE, BERT's vocab.txt its WordPiece (lower-cased unless tokenizer_config.json says do_lower_case=false), Marian's
source.spm + vocab.json a Unigram model (needs the ``sentencepiece`` package to read the .spm file). Nothing else
is guessed: a directory without any of these is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

from bigbatch.data.tokenizer import HFTokenizer
from bigbatch.errors import UserError

EXPECTED = {"gpt2": "tokenizer.json, or vocab.json + merges.txt", "bert": "tokenizer.json, or vocab.txt",
            "marian": "tokenizer.json, or source.spm + vocab.json"}


def _tokenizer_config(hf_dir: Path) -> dict:
    path = hf_dir / "tokenizer_config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not JSON ({e})") from None


def import_tokenizer(hf_dir: Path, family: str) -> tuple[bytes, HFTokenizer]:
    """(the bytes of a tokenizer.json, the tokenizer) of a checkpoint directory."""
    from tokenizers import Tokenizer

    file = hf_dir / "tokenizer.json"
    if file.exists():
        try:
            tok = Tokenizer.from_file(str(file))
        except Exception as e:
            raise UserError(f"{file}: not a valid tokenizer.json ({' '.join(str(e).split())[:200]})") from None
    elif family == "gpt2" and (hf_dir / "vocab.json").exists() and (hf_dir / "merges.txt").exists():
        tok = _byte_level_bpe(hf_dir)
    elif family == "bert" and (hf_dir / "vocab.txt").exists():
        from tokenizers.implementations import BertWordPieceTokenizer

        lower = _tokenizer_config(hf_dir).get("do_lower_case", True)
        tok = BertWordPieceTokenizer(str(hf_dir / "vocab.txt"), lowercase=lower)._tokenizer
    elif family == "marian" and (hf_dir / "source.spm").exists() and (hf_dir / "vocab.json").exists():
        tok = _marian_unigram(hf_dir)
    else:
        raise UserError(f"{hf_dir}: no tokenizer; a {family} checkpoint needs {EXPECTED[family]}")
    return tok.to_str().encode("utf-8"), HFTokenizer(tok, "file")


def _byte_level_bpe(hf_dir: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    tok = Tokenizer(models.BPE.from_file(str(hf_dir / "vocab.json"), str(hf_dir / "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    if tok.token_to_id("<|endoftext|>") is not None:
        tok.add_special_tokens(["<|endoftext|>"])
    return tok


def _marian_unigram(hf_dir: Path):
    """Marian's source.spm scores over its vocab.json ids (pieces of the shared vocabulary the source model lacks
    get a score below all of its own, so they are picked only where nothing else spells the text)."""
    target = hf_dir / "target.spm"
    if target.exists() and target.read_bytes() != (hf_dir / "source.spm").read_bytes():
        raise UserError(f"{hf_dir}: source.spm and target.spm differ; bigbatch segments both sides with one "
                        "tokenizer (give a tokenizer.json that covers both languages)")
    try:
        import sentencepiece
    except ImportError:
        raise UserError(f"{hf_dir}: the tokenizer is source.spm; reading it needs the sentencepiece package "
                        "(pip install sentencepiece), or give a tokenizer.json") from None
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    sp = sentencepiece.SentencePieceProcessor(model_file=str(hf_dir / "source.spm"))
    scores = {sp.id_to_piece(i): sp.get_score(i) for i in range(sp.get_piece_size())}
    vocab = json.loads((hf_dir / "vocab.json").read_text(encoding="utf-8"))
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise UserError(f"{hf_dir / 'vocab.json'}: ids are not 0..{len(by_id) - 1}")
    floor = min(scores.values(), default=0.0) - 10.0
    specials = [p for p in ("</s>", "<unk>", "<pad>") if p in vocab]
    pieces = [(p, 0.0 if p in specials else scores.get(p, floor)) for p, _ in by_id]
    tok = Tokenizer(models.Unigram(pieces, unk_id=vocab.get("<unk>"), byte_fallback=False))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.add_special_tokens(specials)
    if "</s>" in vocab:
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return tok


def byte_level_alphabet() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte (its byte-level BPE's alphabet, byte -> character)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(rest)}}


def byte_tokenizer():
    """bigbatch's byte tokenizer (ids 0-255 the UTF-8 bytes, then <eos> 256, <pad> 257, <bos> 258) as a
    tokenizers.Tokenizer: a byte-level BPE without merges, so Hugging Face tokenizers give the same ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: b for b, ch in byte_level_alphabet().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<eos>", "<pad>", "<bos>"])
    return tok


def export_tokenizer(tokenizer, out: Path, max_len: int) -> None:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json for ``AutoTokenizer``."""
    tok = tokenizer.tok if hasattr(tokenizer, "tok") else byte_tokenizer()
    (out / "tokenizer.json").write_text(tok.to_str(), encoding="utf-8")
    special = {"bos_token": tokenizer.bos_id, "eos_token": tokenizer.eos_id, "pad_token": tokenizer.pad_id}
    names = {k: tok.id_to_token(i) for k, i in special.items() if i is not None}
    for key, candidates in (("unk_token", ("<unk>", "[UNK]", "<|endoftext|>")), ("cls_token", ("[CLS]", "<cls>")),
                            ("sep_token", ("[SEP]", "<sep>")), ("mask_token", ("[MASK]", "<mask>"))):
        found = next((c for c in candidates if tok.token_to_id(c) is not None), None)
        if found is not None:
            names[key] = found
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len, **names}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps(names, indent=2) + "\n", encoding="utf-8")
