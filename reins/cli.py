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


def _fraction(text: str) -> float:
    value = _finite_float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {value}")
    return value


def _window_bound(text: str) -> float:
    value = _finite_float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction of the schedule in [0, 1], got {value}")
    return value


def _check_window(args: argparse.Namespace) -> tuple[float, float]:
    start, end = args.step_window
    if start >= end:
        raise UsageError(f"--step-window START must be below END, got {start} {end}")
    return start, end


def _add_steering_window(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--step-window", nargs=2, type=_window_bound, default=[0.0, 0.5], metavar=("START", "END"),
                        help="fractions of the denoising schedule to steer or capture (default: 0 0.5)")


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
    spec = marker.get("defaults", {}) if marker else {}
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


def _load_image(args: argparse.Namespace, family):
    """Open --image for image-to-video families; reject it for text-only ones."""
    if family.image_input == "required" and args.image is None:
        raise UsageError(f"--image is required for {family.name} models")
    if family.image_input == "none" and args.image is not None:
        raise UsageError(f"--image is not accepted by {family.name} models (text-to-video)")
    if args.image is None:
        return None
    from reins.images import ImageError, load_image

    try:
        return load_image(args.image.read_bytes(), args.width_resolved, args.height_resolved)
    except (OSError, ImageError) as error:
        raise UsageError(f"--image {args.image}: {error}") from None


def _load_judge(args: argparse.Namespace):
    if args.judge is None:
        return None
    from reins.judges import ImageClassifierJudge

    try:
        return ImageClassifierJudge(args.judge, unsafe_labels=args.unsafe_label or ["unsafe"])
    except (OSError, ValueError) as error:
        raise UsageError(f"--judge {args.judge}: {error}") from None


def cmd_discover(args: argparse.Namespace) -> int:
    from reins.discovery import discover, read_prompts

    try:
        prompts = read_prompts(args.prompts, require_labels=args.judge is None)
    except (OSError, ValueError) as error:
        raise UsageError(f"--prompts: {error}") from None
    judge = _load_judge(args)
    pipeline, family = _load(args)
    params = _generation_params(args, args.model, family, prompt="")
    args.width_resolved, args.height_resolved = params.width, params.height
    image = _load_image(args, family)
    report_path = args.report or args.out.with_suffix(".report.json")
    try:
        result = discover(pipeline, prompts, params, model_id=args.model_id or args.model, out=args.out,
                          block_index=args.block, judge=judge, step_window=_check_window(args),
                          test_fraction=args.test_fraction, image=image, report_path=report_path)
    except ValueError as error:
        raise UsageError(str(error)) from None
    summary = {"direction": str(args.out), "report": str(report_path), "sha256": result.direction.metadata.sha256,
               "block_index": result.direction.metadata.block_index,
               "layers": [{k: row[k] for k in ("block", "probe_accuracy", "auc", "mean_norm")}
                          for row in result.report["layers"]]}
    print(json.dumps(summary, indent=2))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from reins.discovery import read_prompts
    from reins.sweep import sweep, write_sweep

    try:
        prompts = read_prompts(args.prompts)
    except (OSError, ValueError) as error:
        raise UsageError(f"--prompts: {error}") from None
    judge = _load_judge(args)
    if judge is None:
        raise UsageError("--judge is required: the steering effect is the judged unsafe rate")
    pipeline, family = _load(args)
    params = _generation_params(args, args.model, family, prompt="")
    try:
        report = sweep(pipeline, prompts, params, judge, strengths=args.strength or [1.0], step_window=_check_window(args),
                       heldout_fraction=args.heldout_fraction)
    except ValueError as error:
        raise UsageError(str(error)) from None
    json_path, png_path = write_sweep(report, args.out_dir)
    print(json.dumps({"json": str(json_path), "plot": str(png_path)}, indent=2))
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
    args.width_resolved, args.height_resolved = params.width, params.height
    image = _load_image(args, family)
    steerer = steering = None
    if direction is not None:
        steerer = Steerer(pipeline, block_index=direction.metadata.block_index)
        if steerer.hidden_size != direction.metadata.hidden_size:
            raise UsageError(
                f"--direction {args.direction} was fitted on a model with hidden size {direction.metadata.hidden_size} "
                f"({direction.metadata.model_id}); {args.model} has hidden size {steerer.hidden_size}"
            )
        try:
            steering = SteeringConfig(
                direction.vector, args.strength, direction.metadata.reference_norm,
                step_window=_check_window(args), branch_mode=args.branch_mode,
                strength_mode="absolute" if args.absolute else "relative", preserve_norm=args.preserve_norm,
                adaptive=args.adaptive, probe_reference=direction.probe_reference,
            )
        except ValueError as error:
            raise UsageError(str(error)) from None
    frames = generate(pipeline, params, steerer, steering, image=image)
    write_mp4(frames, args.out, fps=args.fps)
    print(json.dumps({"out": str(args.out), "video": probe_mp4(args.out), "strength": args.strength,
                      "block_index": steerer.block_index if steerer else None,
                      "probe_score": steerer.probe_scores()[0] if steerer and steerer.probe_scores() else None},
                     indent=2))
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


def cmd_tenants(args: argparse.Namespace) -> int:
    from app.settings import Settings
    from app.tenants import (TenantsFileError, add_api_key, create_tenant, delete_tenant, load_tenants,
                             revoke_api_key)

    path = args.file or Settings().tenants_file
    try:
        if args.action == "create":
            presets = dict(_parse_preset(item) for item in args.preset) if args.preset else None
            tenant, key = create_tenant(
                path, args.name, args.default_strength, args.min_strength, args.max_strength, presets=presets,
                models=args.models.split(",") if args.models else None,
                rate_limit_per_minute=args.rate_limit_per_minute, max_concurrent_jobs=args.max_concurrent_jobs,
                webhook_url=args.webhook_url,
            )
            print(json.dumps({"tenant": tenant.name, "key_id": tenant.api_keys[0].id, "api_key": key,
                              "webhook_secret": tenant.webhook_secret}, indent=2))
            print("Store the API key now: only its sha256 is kept.", file=sys.stderr)
        elif args.action == "add-key":
            key_id, key = add_api_key(path, args.name)
            print(json.dumps({"tenant": args.name, "key_id": key_id, "api_key": key}, indent=2))
        elif args.action == "revoke-key":
            revoke_api_key(path, args.name, args.key_id)
            print(f"revoked {args.key_id} of {args.name}")
        elif args.action == "delete":
            delete_tenant(path, args.name)
            print(f"deleted tenant {args.name}")
        else:
            tenants = load_tenants(path)
            listing = [
                {"tenant": name, "keys": [{"id": key.id, "created_at": key.created_at} for key in tenant.api_keys],
                 **tenant.model_dump(exclude={"name", "api_keys", "webhook_secret"}, exclude_none=True),
                 "presets": tenant.allowed_presets}
                for name, tenant in tenants.items()
            ]
            print(json.dumps(listing, indent=2))
    except TenantsFileError as error:
        raise UsageError(str(error)) from None
    return 0


def _parse_preset(text: str) -> tuple[str, float]:
    name, separator, value = text.partition("=")
    if not separator or not name:
        raise UsageError(f"--preset must be NAME=STRENGTH, got {text!r}")
    try:
        return name, _finite_float(value)
    except argparse.ArgumentTypeError as error:
        raise UsageError(f"--preset {text!r}: {error}") from None


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
    disc.add_argument("--report", type=Path, help="JSON report path (default: OUT with .report.json)")
    disc.add_argument("--judge", help="label generations with this image classifier (folder or hub id) "
                                      "instead of the prompt file's labels")
    disc.add_argument("--unsafe-label", action="append", help="judge class counted as unsafe (repeatable; "
                                                               "default: unsafe)")
    disc.add_argument("--test-fraction", type=_fraction, default=0.3, help="held-out share for the probe report")
    disc.add_argument("--image", type=Path, help="input image, for image-to-video families")
    _add_steering_window(disc)
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
    gen.add_argument("--image", type=Path, help="input image, for image-to-video families")
    gen.add_argument("--branch-mode", choices=["both", "cond"], default="both",
                     help="steer both guidance branches or only the conditional one")
    gen.add_argument("--absolute", action="store_true", help="--strength is an absolute vector length, not a "
                                                             "multiple of the direction's reference norm")
    gen.add_argument("--preserve-norm", action="store_true", help="rescale steered tokens to their original norm")
    gen.add_argument("--adaptive", action="store_true", help="scale the strength by the probe score")
    _add_steering_window(gen)
    _add_generation_options(gen)

    swp = commands.add_parser("sweep", help="probe accuracy and steering effect for every block (JSON and PNG)")
    swp.add_argument("--model", required=True, help="pipeline folder or hub id")
    swp.add_argument("--prompts", required=True, type=Path, help='JSONL of {"prompt": ..., "label": ...}')
    swp.add_argument("--judge", required=True, help="image classifier (folder or hub id) that scores videos")
    swp.add_argument("--unsafe-label", action="append", help="judge class counted as unsafe (default: unsafe)")
    swp.add_argument("--out-dir", required=True, type=Path, help="folder for sweep.json and sweep.png")
    swp.add_argument("--strength", type=_finite_float, action="append",
                     help="strength to test (repeatable; default: 1.0)")
    swp.add_argument("--heldout-fraction", type=_fraction, default=0.3, help="share of prompts held out")
    _add_steering_window(swp)
    _add_generation_options(swp)
    swp.set_defaults(handler=cmd_sweep)
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

    tenants = commands.add_parser("tenants", help="create, list and revoke tenants and API keys")
    tenants.add_argument("--file", type=Path, help="tenants file (default: REINS_TENANTS_FILE or tenants.toml)")
    actions = tenants.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="add a tenant and print its first API key")
    create.add_argument("name")
    create.add_argument("--default-strength", type=_finite_float, default=1.0)
    create.add_argument("--min-strength", type=_finite_float, default=0.0)
    create.add_argument("--max-strength", type=_finite_float, default=2.0)
    create.add_argument("--preset", action="append", help="NAME=STRENGTH (repeatable; default: off, light, "
                                                          "standard, strict within the range)")
    create.add_argument("--models", help="comma-separated models the tenant may use (default: all)")
    create.add_argument("--rate-limit-per-minute", type=_positive_int)
    create.add_argument("--max-concurrent-jobs", type=_positive_int)
    create.add_argument("--webhook-url", help="URL that receives signed job events")
    actions.add_parser("list", help="list tenants, key ids and policies (no secrets)")
    add_key = actions.add_parser("add-key", help="print a new API key for a tenant")
    add_key.add_argument("name")
    revoke = actions.add_parser("revoke-key", help="remove one API key")
    revoke.add_argument("name")
    revoke.add_argument("key_id")
    delete = actions.add_parser("delete", help="remove a tenant and its keys")
    delete.add_argument("name")
    tenants.set_defaults(handler=cmd_tenants)

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
