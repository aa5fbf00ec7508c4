"""Compression of trained runs, each giving a run directory every command accepts (``bigbatch compress ...``):

    quantize.py   int8 linear layers (dynamic-int8: int8 products on the CPU; weight-int8: int8 storage)
    prune.py      structured pruning of attention heads and feed-forward neurons (+ recovery fine-tuning),
                  and global magnitude pruning for comparison
    distill.py    a teacher's soft targets in the training objective; sequence-level distillation
    measure.py    size, inference latency and quality of a model, the numbers each command reports
"""
