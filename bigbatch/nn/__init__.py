"""Model building blocks and task models; nothing here knows about training."""

from bigbatch.nn.attention import MultiHeadAttention, scaled_dot_product_attention
from bigbatch.nn.audio import AudioClassifier, LogMel, mel_filterbank
from bigbatch.nn.generate import beam_search, generate, translate
from bigbatch.nn.layers import Block, FeedForward, RotaryEmbedding
from bigbatch.nn.models import (CausalLM, Seq2Seq, TextClassifier, ViT, build_model, count_parameters,
                                flops_per_token)
from bigbatch.nn.rnn import RNNClassifier, RNNSeq2Seq
from bigbatch.nn.transformer import Decoder, Encoder

EncoderDecoder = Seq2Seq  # the encoder-decoder of Vaswani et al.: Encoder + Decoder with cross-attention

__all__ = [
    "AudioClassifier", "LogMel", "RNNClassifier", "RNNSeq2Seq", "ViT", "mel_filterbank",
    "Block", "CausalLM", "Decoder", "Encoder", "EncoderDecoder", "FeedForward", "MultiHeadAttention", "RotaryEmbedding",
    "Seq2Seq", "TextClassifier", "beam_search", "build_model", "count_parameters", "flops_per_token",
    "generate", "scaled_dot_product_attention", "translate",
]
