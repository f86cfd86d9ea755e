"""convrnn: convolutional-recurrent sequence models on PyTorch."""
__version__ = "0.1.0"
