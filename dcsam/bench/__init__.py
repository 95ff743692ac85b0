"""``dcsam bench``: how fast pre-annotation runs on this device, and how close it is to the hardware.

One run measures, on whatever device it runs on, with the example's features cached once:

* **end_to_end**: a platform's own path, encoded image bytes in, the platform's regions out
  (``output.decode`` -> ``InContextSegmenter.predict`` -> ``output.encode``, see :class:`BenchOutput`;
  with the Label Studio backend installed: JPEG bytes in, brush RLE regions out), images/s and
  per-batch latency. No synchronisation inside a batch, as in production.
* **stages**: the same work split into decode, preprocess (resize, pinned-memory transfer), prior
  backbone, SAM encoder, prompt generator + SAM decoder (the engine's own code, including the upsampling
  of the masks to the native size), and the output's encoding (``rle`` for brush regions); CUDA is
  synchronised around every stage timer.
* **sam_encoder_raw**: SAM's own image encoder alone at the same batch size and precision, on a
  ready-made input tensor: the ceiling the pipeline can reach, and the ratio of the two.
* **video**: frames/s of our SAM 2 video propagation (``dcsam.video.VideoSegmenter`` with
  ``Sam2Propagator``: one pass for all objects, bounded memory) against upstream SAM 2's own
  ``SAM2VideoPredictor`` (the ``sam2`` package, same weights, same autocast) on the same synthetic
  clip (moving shapes, fixed seed), for each object count of ``--video-objects``, after an untimed
  warm-up clip. Both start from the objects' masks on frame 0 (upstream: ``add_new_mask`` per object,
  then ``propagate_in_video``) and get the same in-memory frames: upstream's ``init_state`` reads them
  through its own loader's slot (``load_video_frames``), resized and normalised as ours does, instead
  of JPEG files, so no JPEG decoding is timed on either side; its ``init_state`` (preprocessing of
  every frame, encoding of frame 0) is timed as part of its run and reported apart. A run ends with
  every frame's masks on the host as bool arrays, on both sides. Also: the mean IoU of our masks
  against upstream's (frames 1..N-1), i.e. whether the two did the same work.

Everything runs under ``torch.inference_mode``; bf16 autocast on CUDA is the engine's own
(``--precision``; the video part gives upstream the same autocast); ``--compile`` compiles SAM's image
encoder with ``torch.compile`` for the pipeline, the raw measurement and both video sides. The queries
are synthetic JPEGs and the clip synthetic frames (fixed seed), so no data set is needed.

    dcsam bench --sam sam2.1_hiera_b+ --batch-size 8 --precision bf16          # a GPU
    dcsam bench --sam sam2.1_hiera_t --random-weights --image-size 256 --offline  # CPU smoke run
    dcsam bench ... --video-frames 64 --video-size 854x480 --video-objects 1,3     # video (the defaults)
"""

from .images import BENCH_SCHEMA, run_bench
from .options import OUTPUTS_GROUP, BenchOptions, BenchOutput, load_output, output_names, png_output
from .synthetic import encode_jpeg, synthetic_scene, synthetic_video
from .video import VIDEO_TARGETS, mean_iou, video_bench

__all__ = [
    "BENCH_SCHEMA",
    "OUTPUTS_GROUP",
    "VIDEO_TARGETS",
    "BenchOptions",
    "BenchOutput",
    "encode_jpeg",
    "load_output",
    "mean_iou",
    "output_names",
    "png_output",
    "run_bench",
    "synthetic_scene",
    "synthetic_video",
    "video_bench",
]
