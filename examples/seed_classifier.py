"""The founding document's sequence classifier, written so that it runs.

The original built an nn.Transformer classifier but could not run as printed: vocab_size was
never defined, integer targets of shape (32,) went to BCEWithLogitsLoss (which wants float
targets shaped like the logits), and (batch, seq) tensors went to a sequence-first
nn.Transformer. Same idea here with bigbatch's TextClassifier: embedding, Transformer encoder,
linear head; BCE-with-logits, Adam, 10 epochs on one batch of 32 random sequences of length 10,
vocabulary 10000, d_model 512, 8 heads, 2 layers.

    python examples/seed_classifier.py
"""

import torch
import torch.nn as nn

from bigbatch.nn import TextClassifier

torch.manual_seed(0)
vocab_size, d_model, n_heads, n_layers = 10000, 512, 8, 2
batch_size, seq_len, epochs = 32, 10, 10

model = TextClassifier(vocab_size=vocab_size, d_model=d_model, n_heads=n_heads, n_layers=n_layers,
                       num_classes=1, max_len=seq_len, pos="sinusoidal", norm_first=False)
criterion = nn.BCEWithLogitsLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

inputs = torch.randint(0, vocab_size, (batch_size, seq_len))  # (B, T): bigbatch models are batch-first
targets = torch.randint(0, 2, (batch_size, 1)).float()        # (B, 1) floats, shaped like the logits

for epoch in range(epochs):
    optimizer.zero_grad()
    logits = model(inputs)                                     # (B, 1)
    loss = criterion(logits, targets)
    loss.backward()
    optimizer.step()
    print(f"Epoch [{epoch + 1}/{epochs}], Loss: {loss.item():.4f}")
