"""DiT-XL/2 sampling throughput (GPU check 4, the basis of `--plan`'s GPU-hour estimate): DiT-XL/2-256 with
random weights, built from its published architecture (no hub), sampled the way ddbench samples (the
harness's DDIM loop with classifier-free guidance, then the SD VAE decode) at several batch sizes and dtypes.
Prints, per (dtype, batch): images/s, seconds per image, peak GPU memory, and the sustained TFLOP/s the
transformer reached — the figure to pass to `--plan --gpu-tflops`. Writes the same as JSON with `--json`.

    python perf/dit_sampling_throughput.py [--batches 1,16,64,256] [--dtypes bfloat16,float32] [--steps 50]
    python perf/dit_sampling_throughput.py --device cpu --batches 1 --steps 2 --layers 2   # a smoke run
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from diffusers import AutoencoderKL, DiTTransformer2DModel  # noqa: E402

from harness.config.loader import load_suite  # noqa: E402
from harness.models.generators.dit import DIT_GUIDED_CHANNELS, DiTBackbone  # noqa: E402
from harness.models.generators.pixel_dit import build_scheduler  # noqa: E402
from harness.models.generators.pretrained_dit import KNOWN_DITS, SD_VAE  # noqa: E402
from harness.models.generators.sampling import ddim_sample  # noqa: E402
from harness.report.plan import backbone_flops  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batches", default="1,16,64,256")
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg-scale", type=float, default=4.0)
    p.add_argument("--layers", type=int, default=None, help="fewer transformer layers (a smoke run only)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    device = torch.device(args.device)
    config = dict(KNOWN_DITS["facebook/DiT-XL-2-256"])
    if args.layers:
        config["num_layers"] = args.layers
    scheduler = build_scheduler()  # DiT's linear schedule over 1,000 steps, as the hub's config has it
    torch.manual_seed(0)
    transformer, vae = DiTTransformer2DModel(**config), AutoencoderKL(**SD_VAE)
    per_eval = backbone_flops(load_suite("imagenet", check_files=False), 3, 1000)[0] * config["num_layers"] / 28
    results = []
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        bb = DiTBackbone(
            transformer.to(device, dtype), scheduler, vae.to(device, dtype), guided_channels=DIT_GUIDED_CHANNELS
        )  # as prepare loads DiT-XL/2
        for batch in map(int, args.batches.split(",")):
            gen = torch.Generator().manual_seed(0)
            noise = torch.randn((batch, *bb.latent_shape), generator=gen).to(device)
            labels = torch.randint(0, 1000, (batch,), generator=gen).to(device)

            def sync():
                if device.type == "cuda":
                    torch.cuda.synchronize(device)

            def sample() -> tuple[float, float]:
                """Seconds in the transformer's steps and in the decode, apart: --gpu-tflops is the former's."""
                t0 = time.perf_counter()
                latents = ddim_sample(bb, noise, labels, args.steps, args.cfg_scale)
                sync()
                t1 = time.perf_counter()
                bb.decode(latents)
                sync()
                return t1 - t0, time.perf_counter() - t1

            try:
                sample() if device.type == "cuda" else None  # warm-up: kernels, allocator
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                steps_seconds, decode_seconds = sample()
                seconds = steps_seconds + decode_seconds
            except torch.OutOfMemoryError:
                print(f"{dtype_name:9} batch {batch:4}: out of memory", flush=True)
                torch.cuda.empty_cache()
                continue
            peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
            evals = batch * args.steps * (2 if args.cfg_scale != 1 else 1)
            row = {
                "dtype": dtype_name,
                "batch": batch,
                "steps": args.steps,
                "seconds": seconds,
                "images_per_s": batch / seconds,
                "seconds_per_image": seconds / batch,
                "peak_memory_bytes": peak,
                "decode_seconds": decode_seconds,
                "transformer_tflops": evals * per_eval / steps_seconds / 1e12,
                "layers": config["num_layers"],
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            }
            results.append(row)
            print(
                f"{dtype_name:9} batch {batch:4}: {row['images_per_s']:8.2f} images/s  "
                f"{row['seconds_per_image']:8.3f} s/image  peak "
                + (f"{peak / 2**30:6.1f} GiB" if peak is not None else "   n/a")
                + f"  transformer {row['transformer_tflops']:6.1f} TFLOP/s",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
