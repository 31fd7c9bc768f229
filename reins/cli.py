"""The `reins` command line: tiny models, discovery, one-off generation, the API, the worker and the demo.

Invalid arguments exit with code 2 and a message naming the option, the value and what is allowed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# Depth of the toy model, equal to TrainingConfig.num_layers. It is a constant here so that building the parser does
# not import torch.
TOY_BLOCKS = 8


class UsageError(Exception):
    """Invalid command-line input; reported with exit code 2."""


class InputRejected(UsageError):
    """The server or a data file rejected the input (exit code 2); the command line itself was fine, so no usage
    banner is printed."""


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


def _non_negative_float(text: str) -> float:
    value = _finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of 0 or more, got {value}")
    return value


def _device(text: str) -> str:
    if text == "auto":
        return text
    import torch

    try:
        torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}") from None
    return text


def _check_output(option: str, path: Path | None, suffix: str | None = None) -> None:
    """Raise a UsageError before any work when `path` cannot be written as a file."""
    if path is None:
        return
    if suffix is not None and path.suffix.lower() != suffix:
        raise UsageError(f"invalid {option} {path}: expected a file name ending in {suffix}")
    if path.is_dir():
        raise UsageError(f"invalid {option} {path}: it is a folder, expected the path of a file to write")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"invalid {option} {path}: {parent} is a file, not a folder")
            break


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
    parser.add_argument("--steps", type=_positive_int,
                        help="denoising steps (default: the value a tiny model records, else 30)")
    parser.add_argument("--guidance-scale", type=_non_negative_float, default=5.0,
                        help="classifier-free guidance scale (default: 5)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--device", type=_device, default="auto",
                        help="torch device: auto, cpu, cuda, cuda:N (default: auto)")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                        help="torch dtype of the weights and activations (default: auto)")


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


def cmd_tiny_judge(args: argparse.Namespace) -> int:
    from reins.judges import save_tiny_classifier

    save_tiny_classifier(str(args.out), seed=args.seed)
    print(f"wrote a random-weight image classifier with classes safe and unsafe to {args.out}")
    return 0


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from reins.tiny import save_tiny_model

    out = save_tiny_model(args.out, family=args.family, size=args.size, seed=args.seed)
    print(f"wrote {args.size} {args.family} pipeline to {out}")
    return 0


def _load(args: argparse.Namespace):
    from reins.families import family_for_pipeline
    from reins.pipelines import load_pipeline

    if args.model.startswith(("/", ".", "~")) and not Path(args.model).expanduser().exists():
        raise UsageError(f"invalid --model {args.model!r}: folder not found; pass an existing folder, a hub id "
                         "(owner/name) or toy")
    if not Path(args.model).exists() and "/" not in args.model and args.model != "toy":
        raise UsageError(f"--model {args.model!r} is neither an existing folder, a hub id of the form owner/name, "
                         "nor toy (the shipped toy model)")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"invalid --device {args.device}: CUDA is not available on this machine; pass cpu or "
                             "auto")
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


def cmd_toy_train(args: argparse.Namespace) -> int:
    from reins.toy.pipeline import CHECKPOINT_DIR
    from reins.toy.train import TrainingConfig, train

    out = args.out or CHECKPOINT_DIR
    config = TrainingConfig(seed=args.seed, steps=args.steps, max_minutes=args.max_minutes,
                            text_blocks=args.text_blocks)
    record = train(config, out, progress=not args.no_progress)
    summary = {key: record[key] for key in ("steps_done", "stopped_early", "seconds", "final_loss",
                                            "transformer_parameters")}
    print(json.dumps({"out": str(out), **summary}, indent=2))
    return 0


def cmd_toy_eval(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from reins.toy.evaluate import EvaluationConfig, evaluate, format_table, shipped_setting
    from reins.toy.pipeline import is_toy_checkpoint

    if not is_toy_checkpoint(args.model):
        raise UsageError(f"invalid --model {args.model!r}: not a toy checkpoint; pass toy (the shipped one) or a "
                         "folder written by reins toy train")
    if args.shipped and args.direction_out is not None:
        raise UsageError("invalid --direction-out with --shipped: --shipped measures the shipped direction, so there "
                         "is no new one to write; drop one of the two")
    for option, path in (("--plot", args.plot), ("--frames", args.frames), ("--direction-out", args.direction_out)):
        _check_output(option, path)
    config = EvaluationConfig(samples_per_prompt=args.samples_per_prompt, seed=args.seed)
    setting = None
    if args.shipped:
        setting = shipped_setting()
        # The sweep then only draws the curves, so it runs at the shipped window and strength alone.
        config = replace(config, step_windows=(setting.step_window,), strengths=(setting.strength,))
    report = evaluate(args.model, config, plot_path=args.plot, direction_path=args.direction_out,
                      frames_path=args.frames, setting=setting)
    print(json.dumps(report, indent=2) if args.json else format_table(report))
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
    from reins.video import probe_mp4, provenance_comment, write_mp4

    for flag, requested in (("--adaptive", args.adaptive), ("--token-gate", args.token_gate)):
        if requested and args.direction is None:
            raise UsageError(f"missing --direction: {flag} reads the probe score along a direction; pass --direction "
                             f"FILE or drop {flag}")
    if args.strength != 0 and args.direction is None:
        raise UsageError("--direction is required unless --strength is 0")
    _check_output("--out", args.out, ".mp4")
    window = _check_window(args)
    direction = None
    if args.direction is not None:
        try:
            direction = load_direction(args.direction)
        except DirectionFileError as error:
            raise UsageError(f"--direction: {error}") from None
        for flag, requested in (("--adaptive", args.adaptive), ("--token-gate", args.token_gate)):
            # Both read probe scores, which the file's safe and unsafe means calibrate.
            if requested and direction.probe_reference is None:
                raise UsageError(f"invalid {flag} with --direction {args.direction}: the file has no distinct safe "
                                 f"and unsafe probe means; refit it with reins discover, or drop {flag}")
    pipeline, family = _load(args)
    params = _generation_params(args, args.model, family, args.prompt, args.negative_prompt)
    args.width_resolved, args.height_resolved = params.width, params.height
    image = _load_image(args, family)
    steerer = steering = None
    if direction is not None:
        steerer = Steerer(pipeline, block_index=direction.metadata.block_index)
        if direction.metadata.family != family.name:
            raise UsageError(
                f"--direction {args.direction} was fitted on a {direction.metadata.family} model "
                f"({direction.metadata.model_id}); {args.model} is a {family.name} model"
            )
        if steerer.hidden_size != direction.metadata.hidden_size:
            raise UsageError(
                f"--direction {args.direction} was fitted on a model with hidden size {direction.metadata.hidden_size} "
                f"({direction.metadata.model_id}); {args.model} has hidden size {steerer.hidden_size}"
            )
        try:
            steering = SteeringConfig(
                direction.vector, args.strength, direction.metadata.reference_norm,
                step_window=window, branch_mode=args.branch_mode,
                strength_mode="absolute" if args.absolute else "relative", preserve_norm=args.preserve_norm,
                adaptive=args.adaptive, token_gate=args.token_gate, probe_reference=direction.probe_reference,
            )
        except ValueError as error:
            raise UsageError(str(error)) from None
    frames = generate(pipeline, params, steerer, steering, image=image)
    comment = provenance_comment({
        "model": args.model, "seed": params.seed, "steps": params.num_inference_steps,
        "guidance": params.guidance_scale, "strength": args.strength,
        "strength_mode": steering.strength_mode if steering else None,
        "block": steerer.block_index if steerer else None, "window": steering.step_window if steering else None,
        "branch": steering.branch_mode if steering else None, "preserve_norm": bool(steering and steering.preserve_norm),
        "adaptive": bool(steering and steering.adaptive), "token_gate": bool(steering and steering.token_gate),
        "direction_sha256": direction.metadata.sha256 if direction else None,
    })
    write_mp4(frames, args.out, fps=args.fps, metadata={"comment": comment})
    print(json.dumps({"out": str(args.out), "video": probe_mp4(args.out), "strength": args.strength,
                      "block_index": steerer.block_index if steerer else None,
                      "step_window": list(steering.step_window) if steering else None,
                      "adaptive": bool(steering and steering.adaptive),
                      "token_gate": bool(steering and steering.token_gate),
                      "probe_score": steerer.probe_scores()[0] if steerer and steerer.probe_scores() else None},
                     indent=2))
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    import uvicorn

    from app.settings import Settings

    overrides = {key: value for key, value in (("host", args.host), ("port", args.port),
                                                 ("redis_url", args.redis_url)) if value is not None}
    # Child processes read settings from the environment, so the flags travel there too.
    for key, value in overrides.items():
        os.environ[f"REINS_{key.upper()}"] = str(value)
    settings = Settings()
    created_folder = None
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Several processes share one /metrics only through prometheus_client's multiprocess files.
        created_folder = tempfile.mkdtemp(prefix="reins-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = created_folder
    try:
        # log_config=None leaves uvicorn's loggers to the handler that app.logs installs, so that its access lines
        # follow REINS_LOG_FORMAT too.
        # On SIGTERM uvicorn stops accepting connections and lets requests in flight finish, for at most
        # shutdown_grace_seconds, so that an open event stream cannot hold the shutdown forever.
        uvicorn.run("app.main:create_app", factory=True, host=settings.host, port=settings.port,
                    workers=args.workers, log_level=settings.log_level.lower(), log_config=None,
                    timeout_graceful_shutdown=settings.shutdown_grace_seconds)
    finally:
        if created_folder:
            shutil.rmtree(created_folder, ignore_errors=True)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from app.settings import Settings
    from worker.main import run_worker

    overrides = {"redis_url": args.redis_url} if args.redis_url else {}
    if args.models:
        overrides["worker_models"] = args.models.split(",")
    run_worker(Settings(**overrides), burst=args.burst)
    return 0


def cmd_webhook_worker(args: argparse.Namespace) -> int:
    from app.settings import Settings
    from app.webhooks import run_webhook_worker

    run_webhook_worker(Settings(), burst=args.burst)
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
        raise InputRejected(str(error)) from None
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
    from reins.demo import default_strength, run_demo, strength_range

    if args.strength is not None:
        low, high = strength_range(default_strength(args.model))
        if not low <= args.strength <= high:
            raise UsageError(f"invalid --strength {args.strength}: expected {low} to {high}, the demo tenant's range")
    return run_demo(workdir=Path(args.workdir), out=Path(args.out) if args.out else None,
                    prompt=args.prompt, strength=args.strength, model=args.model)


# Client commands: `reins submit` and `reins jobs ...` talk to a running API through reins.client.


class _ProgressLine:
    """Shows a job's status and progress on stderr: one line rewritten in place on a terminal, else a line per
    change."""

    def __init__(self) -> None:
        self.is_terminal = sys.stderr.isatty()
        self.width = 0

    def show(self, job) -> None:
        text = f"{job.id} {job.status:<11} {job.progress * 100:5.1f}%"
        if self.is_terminal:
            sys.stderr.write("\r" + text.ljust(self.width))
            self.width = len(text)
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def end(self) -> None:
        if self.is_terminal and self.width:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.width = 0


def _api_client(args: argparse.Namespace):
    from reins.client import API_KEY_VARIABLE, ReinsClient

    api_key = args.api_key or os.environ.get(API_KEY_VARIABLE)
    if not api_key:
        raise UsageError(f"missing API key: pass --api-key or set {API_KEY_VARIABLE}")
    try:
        return ReinsClient(args.url, api_key)
    except ValueError as error:
        raise UsageError(f"--url: {error}") from None


def _report_client_error(error: Exception) -> int:
    """Raise an API 4xx that names a field as a UsageError (exit 2). Print any other error and return 1."""
    from reins.client import ReinsAPIError

    if isinstance(error, ReinsAPIError) and 400 <= error.status < 500 and error.field:
        raise InputRejected(error.message) from None
    print(f"error: {error}", file=sys.stderr)
    return 1


def _print_model(value) -> None:
    print(value.model_dump_json(indent=2))


def _wait_and_finish(client, job, args: argparse.Namespace, out: Path | None) -> int:
    """Follow the job with a progress line, download its video if it completed, and print it as JSON."""
    progress = _ProgressLine()
    try:
        job = client.wait(job.id, timeout=args.timeout, on_progress=progress.show)
    finally:
        progress.end()
    if job.status != "completed":
        _print_model(job)
        reason = f": {job.error.code}: {job.error.message}" if job.error else ""
        print(f"job {job.id} {job.status}{reason}", file=sys.stderr)
        return 1
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        client.download(job.id, out)
        print(f"wrote {out}", file=sys.stderr)
    _print_model(job)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from reins.client import ReinsError

    if args.image is not None and not args.image.is_file():
        raise UsageError(f"--image {args.image}: no such file")
    _check_output("--out", args.out)
    fields = {
        "negative_prompt": args.negative_prompt,
        "num_frames": args.num_frames,
        "height": args.height,
        "width": args.width,
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "seed": args.seed,
        "steering_strength": args.strength,
        "steering_preset": args.preset,
    }
    with _api_client(args) as client:
        try:
            job = client.submit(args.model, args.prompt, image=args.image, idempotency_key=args.idempotency_key,
                                **fields)
            print(f"submitted {job.id}", file=sys.stderr)
            if args.no_wait:
                _print_model(job)
                return 0
            return _wait_and_finish(client, job, args, args.out or Path(f"{job.id}.mp4"))
        except ReinsError as error:
            return _report_client_error(error)


def cmd_jobs(args: argparse.Namespace) -> int:
    from reins.client import ReinsError

    with _api_client(args) as client:
        try:
            if args.action == "list":
                if args.all:
                    jobs = [job.model_dump(mode="json") for job in client.iter_jobs(args.limit, args.after)]
                    print(json.dumps(jobs, indent=2))
                else:
                    _print_model(client.list(limit=args.limit, after=args.after))
            elif args.action == "get":
                _print_model(client.get(args.job_id))
            elif args.action == "wait":
                return _wait_and_finish(client, client.get(args.job_id), args, args.out)
            elif args.action == "cancel":
                _print_model(client.cancel(args.job_id))
            elif args.action == "delete":
                _print_model(client.delete(args.job_id))
            else:
                _check_output("--out", args.out)
                out = args.out or Path(f"{args.job_id}.mp4")
                out.parent.mkdir(parents=True, exist_ok=True)
                client.download(args.job_id, out)
                print(f"wrote {out}", file=sys.stderr)
        except ReinsError as error:
            return _report_client_error(error)
    return 0


def _positive_seconds(text: str) -> float:
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value}")
    return value


def _page_size(text: str) -> int:
    value = _positive_int(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"expected at most 100 jobs a page, got {value}")
    return value


def _add_client_commands(commands) -> None:
    """Register `reins submit` and `reins jobs`, which use the API at --url with the key --api-key."""
    from reins.client import API_KEY_VARIABLE, API_URL_VARIABLE, DEFAULT_URL

    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--url", default=os.environ.get(API_URL_VARIABLE) or DEFAULT_URL,
                            help=f"base URL of the API (default: {API_URL_VARIABLE}, else {DEFAULT_URL})")
    connection.add_argument("--api-key", help=f"the tenant's API key (default: {API_KEY_VARIABLE}, which keeps the "
                                              "key out of the process list)")
    waiting = argparse.ArgumentParser(add_help=False)
    waiting.add_argument("--timeout", type=_positive_seconds,
                         help="seconds to wait for the job to end before exiting with code 1 (default: no limit)")

    submit = commands.add_parser("submit", parents=[connection, waiting],
                                 help="queue a generation on the API, follow its progress and download the mp4")
    submit.add_argument("--model", required=True, help="model name as configured on the server")
    submit.add_argument("--prompt", required=True)
    submit.add_argument("--negative-prompt")
    submit.add_argument("--image", type=Path, help="input image, for image-to-video models (sent as multipart)")
    strength = submit.add_mutually_exclusive_group()
    strength.add_argument("--strength", type=_finite_float,
                          help="steering strength, a multiple of the direction's reference norm (default: the "
                               "tenant's default)")
    strength.add_argument("--preset", help="named steering strength from the tenant's presets")
    submit.add_argument("--num-frames", type=_positive_int, help="frames to generate (default: the model's)")
    submit.add_argument("--height", type=_positive_int, help="height in pixels (default: the model's)")
    submit.add_argument("--width", type=_positive_int, help="width in pixels (default: the model's)")
    submit.add_argument("--steps", type=_positive_int, help="denoising steps (default: the model's)")
    submit.add_argument("--guidance-scale", type=_finite_float, help="classifier-free guidance scale "
                                                                      "(default: the model's)")
    submit.add_argument("--seed", type=int, help="random seed (default: 0)")
    submit.add_argument("--out", type=Path, help="mp4 file to write (default: JOB_ID.mp4 in the current folder)")
    submit.add_argument("--no-wait", action="store_true", help="print the queued job and exit without waiting")
    submit.add_argument("--idempotency-key", help="reuse a key to make a repeated command return the first job "
                                                  "(default: a new random key)")
    submit.set_defaults(handler=cmd_submit)

    jobs = commands.add_parser("jobs", help="list, get, wait for, cancel, delete or download jobs on the API")
    actions = jobs.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", parents=[connection], help="print the tenant's jobs, newest first")
    listing.add_argument("--limit", type=_page_size, default=20, help="jobs per page, at most 100 (default: 20)")
    listing.add_argument("--after", metavar="JOB_ID", help="start after this job id (the last_id of a page)")
    listing.add_argument("--all", action="store_true", help="follow the pages and print every job as one array")
    for name, help_text in (("get", "print a job"), ("cancel", "cancel a queued or running job"),
                            ("delete", "delete a job, its video and its input image")):
        action = actions.add_parser(name, parents=[connection], help=help_text)
        action.add_argument("job_id")
    wait = actions.add_parser("wait", parents=[connection, waiting],
                              help="follow a job until it ends, and exit 0 if it completed, else 1")
    wait.add_argument("job_id")
    wait.add_argument("--out", type=Path, help="also download the mp4 to this file if the job completed")
    download = actions.add_parser("download", parents=[connection], help="write a completed job's mp4")
    download.add_argument("job_id")
    download.add_argument("--out", type=Path, help="mp4 file to write (default: JOB_ID.mp4 in the current folder)")
    jobs.set_defaults(handler=cmd_jobs)


def build_parser() -> argparse.ArgumentParser:
    # reins.families imports no torch, so commands that only talk HTTP start fast; every tiny model is named
    # after its family.
    from reins.families import FAMILIES

    tiny_names = sorted(FAMILIES)

    parser = argparse.ArgumentParser(prog="reins", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    commands = parser.add_subparsers(dest="command", required=True)

    tiny = commands.add_parser("tiny-model", help="build a tiny random-weight pipeline with save_pretrained")
    tiny.add_argument("--family", default="wan", choices=tiny_names, help="which tiny pipeline to build")
    tiny.add_argument("--out", required=True, type=Path, help="output folder")
    tiny.add_argument("--size", default="tiny", choices=["tiny", "small"],
                      help="tiny: runs in well under a second; small: about 8 blocks at 128x128, big enough to time")
    tiny.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    tiny.set_defaults(handler=cmd_tiny_model)

    judge = commands.add_parser("tiny-judge", help="build a random-weight safe/unsafe image classifier to use as "
                                                   "--judge in tests and demos")
    judge.add_argument("--out", required=True, type=Path, help="output folder")
    judge.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    judge.set_defaults(handler=cmd_tiny_judge)

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
    gen.add_argument("--model", required=True, help="pipeline folder, hub id (owner/name) or toy")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--direction", type=Path, help="direction file (.safetensors)")
    gen.add_argument("--strength", type=_finite_float, default=1.0,
                     help="multiple of the direction's reference norm (default: 1)")
    gen.add_argument("--out", required=True, type=Path, help="mp4 file to write")
    gen.add_argument("--fps", type=_positive_int, default=16, help="frames per second of the mp4 (default: 16)")
    gen.add_argument("--image", type=Path, help="input image, for image-to-video families")
    gen.add_argument("--branch-mode", choices=["both", "cond"], default="both",
                     help="steer both guidance branches or only the conditional one")
    gen.add_argument("--absolute", action="store_true", help="--strength is an absolute vector length, not a "
                                                             "multiple of the direction's reference norm")
    gen.add_argument("--preserve-norm", action="store_true", help="rescale steered tokens to their original norm")
    gen.add_argument("--adaptive", action="store_true", help="scale the strength by the probe score")
    gen.add_argument("--token-gate", action="store_true",
                     help="scale each token's push by its own probe score, so only tokens that carry the concept move")
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

    toy = commands.add_parser("toy", help="train the toy text-to-video model and measure the effect of steering on it")
    toy_commands = toy.add_subparsers(dest="toy_command", required=True)
    toy_train = toy_commands.add_parser("train", help="train the toy model on this CPU and save the checkpoint")
    toy_train.add_argument("--out", type=Path,
                           help="folder for the checkpoint (default: the shipped one, reins/toy/checkpoint in the package)")
    toy_train.add_argument("--seed", type=int, default=0, help="seed of the weights, data and noise (default: 0)")
    toy_train.add_argument("--steps", type=_positive_int, default=4000, help="optimiser steps (default: 4000)")
    toy_train.add_argument("--max-minutes", type=_finite_float, default=15.0,
                           help="stop early after this many minutes of training (default: 15)")
    toy_train.add_argument("--text-blocks", type=int, choices=range(TOY_BLOCKS + 1), default=TOY_BLOCKS,
                           metavar=f"0-{TOY_BLOCKS}",
                           help="number of blocks, counted from the input, whose cross-attention reads the prompt "
                                f"(default: all {TOY_BLOCKS})")
    toy_train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    toy_train.set_defaults(handler=cmd_toy_train)
    toy_eval = toy_commands.add_parser("eval", help="measure unsteered and steered outputs of the toy model")
    toy_eval.add_argument("--model", default="toy", help="toy checkpoint folder (default: toy, the shipped one)")
    toy_eval.add_argument("--samples-per-prompt", type=_positive_int, default=4,
                          help="seeds per prompt in discovery and for red prompts in the sweep; benign sweep "
                               "prompts get half as many and the test set twice as many (default: 4)")
    toy_eval.add_argument("--seed", type=int, default=0, help="offset added to every seed of the evaluation (default: 0)")
    toy_eval.add_argument("--plot", type=Path, help="write probe accuracy and steering effect by block to this PNG")
    toy_eval.add_argument("--frames", type=Path,
                          help="write the first red-prompt test clips, unsteered above and steered below, to this PNG")
    toy_eval.add_argument("--direction-out", type=Path,
                          help="write the direction of the recommended block to this file, in the format of "
                               "`reins discover`")
    toy_eval.add_argument("--shipped", action="store_true",
                          help="measure the shipped direction with the settings in directions/manifest.json on the "
                               "test seeds, in place of the ones the sweep picks; the sweep runs at those settings "
                               "only")
    toy_eval.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    toy_eval.set_defaults(handler=cmd_toy_eval)
    gen.set_defaults(handler=cmd_generate)

    api = commands.add_parser("api", help="run the HTTP API (settings from REINS_* variables)")
    api.add_argument("--host")
    api.add_argument("--port", type=_positive_int)
    api.add_argument("--redis-url")
    api.add_argument("--workers", type=_positive_int, default=1, help="server processes (default: 1)")
    api.set_defaults(handler=cmd_api)

    work = commands.add_parser("worker", help="run a worker that loads the configured models once")
    work.add_argument("--redis-url")
    work.add_argument("--models", help="comma-separated model names to load (default: all configured)")
    work.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    work.set_defaults(handler=cmd_worker)

    hooks = commands.add_parser("webhook-worker", help="deliver signed webhooks for finished jobs, with retries")
    hooks.add_argument("--burst", action="store_true", help="exit when no delivery is queued")
    hooks.set_defaults(handler=cmd_webhook_worker)

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
    demo.add_argument("--model", choices=["tiny-wan", "toy"], default="tiny-wan",
                      help="tiny-wan: random weights, shows the path; toy: the trained toy model, unsteered and "
                           "steered side by side")
    demo.add_argument("--prompt", help="prompt to generate (default: one that fits the model)")
    demo.add_argument("--strength", type=_finite_float,
                      help="steering strength within the demo tenant's range: for tiny-wan 0 to 2 (default: 1); for "
                           "toy the strength directions/manifest.json records is the default, and the range is 0 to "
                           "twice that, or to 2 if that is more")
    demo.set_defaults(handler=cmd_demo)
    _add_client_commands(commands)
    _record_command_parsers(parser)
    return parser


def _record_command_parsers(parser: argparse.ArgumentParser) -> None:
    """Set each subcommand's `command_parser` default to that subcommand, so an error can print its usage."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                command.set_defaults(command_parser=command)
                _record_command_parsers(command)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        getattr(args, "command_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    from app.logs import configure_logging
    from app.settings import Settings

    configure_logging(args.log_level, Settings().log_format)
    try:
        return args.handler(args)
    except InputRejected as error:
        print(f"reins: error: {error}", file=sys.stderr)
        return 2
    except UsageError as error:
        # Print the usage of the command that was run, not the top-level one. `error` exits with code 2.
        getattr(args, "command_parser", parser).error(str(error))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of stdout (for example `head`) closed it early; that is not an error of this command.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
