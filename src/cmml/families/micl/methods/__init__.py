"""Continual-learning methods of the micl family, one module each behind :class:`.base.MiclMethod`."""
