"""Language modeling from scratch, as executable lecture notebooks that build a real, fast, tested package"""

__version__ = "0.1.0"
