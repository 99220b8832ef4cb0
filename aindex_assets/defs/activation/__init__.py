"""Activation: the batch's released images and the PSNR floor that guards them."""
