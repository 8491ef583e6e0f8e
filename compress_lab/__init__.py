"""compress lab: compress neural networks with Core ML Tools and measure every trade-off."""

__version__ = "0.1.0"
