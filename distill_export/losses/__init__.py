"""KD losses: ``kd_loss`` dispatches between the reference and the fused Triton kernel."""

from distill_export.losses.kd import kd_loss, kd_loss_reference

__all__ = ["kd_loss", "kd_loss_reference"]
