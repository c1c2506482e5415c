"""LAR-Gen (Locate, Assign, Refine): text- and subject-prompted inpainting on the SD-1.5 inpainting backbone.

``assign``: the IP-Adapter-Plus image branch (resampler + per-layer ``to_k_ip``/``to_v_ip``) and its conversion to and
from the ``h94/IP-Adapter`` layout; ``attention``: the processors that add the image branch and the reference keys to
the UNet without adding anything to its state dict; ``refine``: the RefineNet; ``clip_image``: the CLIP image
encoder and subject preprocessing; ``crop``: the square scene crop around the mask; ``net``: the composite denoiser.
"""
