"""ntng_jax: pre-train BERT and T5 (and a GPT decoder) under a fixed Reference-System-Time (RST)
budget and compare efficient-training methods against a fully-decayed baseline.

The core (models, train, methods, optim, rst) never imports TensorFlow, seqio or TFDS; data
adapters that need them are imported on use. Layers and module map: docs/architecture.md.
"""

__version__ = "0.1.0"
