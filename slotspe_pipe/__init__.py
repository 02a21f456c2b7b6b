"""slotspe-pipe: raw slides + RNA-seq to a trained SlotSPE survival model."""

__version__ = "0.1.0"
