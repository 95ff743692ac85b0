"""Model configurations the tests build."""

# DC-SAM at its smallest: the tiny SAM 2 with random weights and small inputs (trains on the CPU)
TINY_DCSAM = dict(
    engine="dcsam",
    sam="sam2.1_hiera_t",
    random_sam_weights=True,
    image_size=128,
    backbone_input_size=256,
    sam_image_size=256,
)
