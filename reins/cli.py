"""The `reins` command line: tiny models, discovery, one-off generation, the API, the worker and the demo.

Invalid arguments exit with code 2 and a message naming the option, the value and what is allowed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

class UsageError(Exception):
    """Invalid command-line input; reported with exit code 2."""


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request at INFO, which would bury the demo's progress lines.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _finite_float(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _add_generation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-frames", type=_positive_int, help="frames to generate (Wan: 4k+1)")
    parser.add_argument("--height", type=_positive_int, help="height in pixels (Wan: a multiple of 16)")
    parser.add_argument("--width", type=_positive_int, help="width in pixels (Wan: a multiple of 16)")
    parser.add_argument("--steps", type=_positive_int, help="denoising steps")
    parser.add_argument("--guidance-scale", type=_finite_float, default=5.0, help="classifier-free guidance scale")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")


def _generation_params(args: argparse.Namespace, model: str, family, prompt: str, negative_prompt: str = ""):
    """Fill generation parameters from options, the tiny model's build record, or the family defaults."""
    from reins.pipelines import GenerationParams
    from reins.tiny import read_tiny_marker

    marker = read_tiny_marker(model) if Path(model).is_dir() else None
    spec = marker["defaults"] if marker else {}
    params = GenerationParams(
        prompt=prompt,
        negative_prompt=negative_prompt,
        num_frames=args.num_frames or spec.get("num_frames") or family.default_num_frames,
        height=args.height or spec.get("height") or family.default_height,
        width=args.width or spec.get("width") or family.default_width,
        num_inference_steps=args.steps or spec.get("num_inference_steps") or 30,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
    )
    for option, problem in (
        ("--num-frames", family.frame_count_error(params.num_frames)),
        ("--height", family.size_error(params.height)),
        ("--width", family.size_error(params.width)),
    ):
        if problem:
            raise UsageError(f"{option} {problem}")
    return params


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from reins.tiny import save_tiny_model

    out = save_tiny_model(args.out, family=args.family, size=args.size, seed=args.seed)
    print(f"wrote {args.size} {args.family} pipeline to {out}")
    return 0


def _load(args: argparse.Namespace):
    from reins.families import family_for_pipeline
    from reins.pipelines import load_pipeline

    if not Path(args.model).exists() and "/" not in args.model:
        raise UsageError(f"--model {args.model!r} is neither an existing folder nor a hub id of the form owner/name")
    pipeline = load_pipeline(args.model, device=args.device, dtype=args.dtype)
    return pipeline, family_for_pipeline(pipeline)


def cmd_discover(args: argparse.Namespace) -> int:
    from reins.discovery import discover, read_prompts

    try:
        prompts = read_prompts(args.prompts)
    except (OSError, ValueError) as error:
        raise UsageError(f"--prompts: {error}") from None
    pipeline, family = _load(args)
    params = _generation_params(args, args.model, family, prompt="")
    direction = discover(pipeline, prompts, params, model_id=args.model_id or args.model, out=args.out,
                         block_index=args.block)
    print(json.dumps({"out": str(args.out), **direction.metadata.__dict__}, indent=2))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from reins.directions import DirectionFileError, load_direction
    from reins.pipelines import generate
    from reins.steering import Steerer, SteeringConfig
    from reins.video import probe_mp4, write_mp4

    if args.strength != 0 and args.direction is None:
        raise UsageError("--direction is required unless --strength is 0")
    direction = None
    if args.direction is not None:
        try:
            direction = load_direction(args.direction)
        except DirectionFileError as error:
            raise UsageError(f"--direction: {error}") from None
    pipeline, family = _load(args)
    params = _generation_params(args, args.model, family, args.prompt, args.negative_prompt)
    steerer = steering = None
    if direction is not None:
        steerer = Steerer(pipeline, block_index=direction.metadata.block_index)
        if steerer.hidden_size != direction.metadata.hidden_size:
            raise UsageError(
                f"--direction {args.direction} was fitted on a model with hidden size {direction.metadata.hidden_size} "
                f"({direction.metadata.model_id}); {args.model} has hidden size {steerer.hidden_size}"
            )
        steering = SteeringConfig(direction.vector, args.strength, direction.metadata.reference_norm)
    frames = generate(pipeline, params, steerer, steering)
    write_mp4(frames, args.out, fps=args.fps)
    print(json.dumps({"out": str(args.out), "video": probe_mp4(args.out), "strength": args.strength,
                      "block_index": steerer.block_index if steerer else None}, indent=2))
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app
    from app.settings import Settings

    overrides = {key: value for key, value in (("host", args.host), ("port", args.port),
                                                 ("redis_url", args.redis_url)) if value is not None}
    settings = Settings(**overrides)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level.lower())
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from app.settings import Settings
    from worker.main import run_worker

    overrides = {"redis_url": args.redis_url} if args.redis_url else {}
    if args.models:
        overrides["worker_models"] = args.models.split(",")
    run_worker(Settings(**overrides), burst=args.burst)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from reins.demo import run_demo

    return run_demo(workdir=Path(args.workdir), out=Path(args.out) if args.out else None,
                    prompt=args.prompt, strength=args.strength)


def build_parser() -> argparse.ArgumentParser:
    from reins.tiny import SIZES, TINY_MODELS

    parser = argparse.ArgumentParser(prog="reins", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    commands = parser.add_subparsers(dest="command", required=True)

    tiny = commands.add_parser("tiny-model", help="build a tiny random-weight pipeline with save_pretrained")
    tiny.add_argument("--family", default="wan", choices=list(TINY_MODELS), help="which tiny pipeline to build")
    tiny.add_argument("--out", required=True, type=Path, help="output folder")
    tiny.add_argument("--size", default="tiny", choices=list(SIZES),
                      help="tiny: runs in well under a second; small: about 8 blocks at 128x128, big enough to time")
    tiny.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    tiny.set_defaults(handler=cmd_tiny_model)

    disc = commands.add_parser("discover", help="fit a steering direction from labelled prompts")
    disc.add_argument("--model", required=True, help="pipeline folder or hub id")
    disc.add_argument("--prompts", required=True, type=Path, help='JSONL of {"prompt": ..., "label": "safe"|"unsafe"}')
    disc.add_argument("--out", required=True, type=Path, help="direction file to write (.safetensors)")
    disc.add_argument("--block", type=int, help="block index to fit (default: half the depth)")
    disc.add_argument("--model-id", help="model id recorded in the file (default: --model)")
    _add_generation_options(disc)
    disc.set_defaults(handler=cmd_discover)

    gen = commands.add_parser("generate", help="run one steered generation in-process, without a server")
    gen.add_argument("--model", required=True, help="pipeline folder or hub id")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--direction", type=Path, help="direction file (.safetensors)")
    gen.add_argument("--strength", type=_finite_float, default=1.0, help="multiple of the direction's reference norm")
    gen.add_argument("--out", required=True, type=Path, help="mp4 file to write")
    gen.add_argument("--fps", type=_positive_int, default=16)
    _add_generation_options(gen)
    gen.set_defaults(handler=cmd_generate)

    api = commands.add_parser("api", help="run the HTTP API (settings from REINS_* variables)")
    api.add_argument("--host")
    api.add_argument("--port", type=_positive_int)
    api.add_argument("--redis-url")
    api.set_defaults(handler=cmd_api)

    work = commands.add_parser("worker", help="run a worker that loads the configured models once")
    work.add_argument("--redis-url")
    work.add_argument("--models", help="comma-separated model names to load (default: all configured)")
    work.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    work.set_defaults(handler=cmd_worker)

    demo = commands.add_parser("demo", help="start Redis, the API and a worker, generate one video, stop")
    demo.add_argument("--out", help="mp4 file to write (default: WORKDIR/demo.mp4)")
    demo.add_argument("--workdir", default="var/demo", help="folder for the tiny model, config and videos")
    demo.add_argument("--prompt", default="a red car moving left on a street at night")
    demo.add_argument("--strength", type=_finite_float, help="steering strength (default: the demo tenant's default)")
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        return args.handler(args)
    except UsageError as error:
        parser.error(str(error))  # exits with code 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
