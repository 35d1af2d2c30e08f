"""Continual-learning methods: one file each behind :class:`cmml.methods.base.Method`, listed in the registry."""
