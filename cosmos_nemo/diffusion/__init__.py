"""Diffusion training and sampling machinery.

This room owns the diffusion losses (EDM, rectified flow), the frame-conditioning policy for
Text/Image/Video2World, the samplers and classifier-free guidance. It is empty until the diffusion family
lands."""
