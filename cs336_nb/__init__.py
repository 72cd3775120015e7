"""Language modeling from scratch, as executable lecture notebooks that build a real, fast, tested package

Modules:

- `cs336_nb.core`: The small toolbox every lecture uses: pick a device, seed everything, time code properly, know the peak FLOP/s and bandwidth of the accelerator you are on, compute MFU, and show values readably."""

__version__ = "0.1.0"
