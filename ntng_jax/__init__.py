"""ntng_jax: pre-train BERT and T5 under a fixed Reference-System-Time budget and compare
efficient-training methods against a fully-decayed baseline.

The core (models, train, methods, optim, rst) never imports TensorFlow, seqio or TFDS; data
adapters that need them are imported on use.
"""

__version__ = "0.1.0"
