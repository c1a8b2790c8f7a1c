"""`batch-pipeline models list | add`: the registry's models, and your own model in one command.

`models add` takes a Hugging Face hub id (downloaded with huggingface_hub into the data folder's
`models/NAME/`) or a local folder (used where it is), checks that its config loads (transformers,
offline, from that folder; no engine is started), and appends a validated entry to the registry
(the file's existing entries and comments are kept as they are). The entry points at the folder, so
the engine loads it offline like the embedded models.
"""

import argparse
import os
import re
import shutil
import sys
from datetime import date
from pathlib import Path

from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.registry import Registry, RegistryError, load_registry, parse_registry, resolve_path
from batch_pipeline.core.settings import Settings
from batch_pipeline.core.storage import write_text_atomic
from batch_pipeline.tools.cli import ToolError

# A context this long fits a 7-8B model's KV cache on a 16-24 GB GPU; --max-model-len changes it.
DEFAULT_MAX_MODEL_LEN = 8192
_GENERATIVE = ("ForCausalLM", "ForConditionalGeneration", "LMHeadModel")
# The files vLLM needs: weights (safetensors preferred), config, tokenizer, chat template.
_WANTED = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja", "tokenizer*"]
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def register(commands) -> None:
    parser = commands.add_parser("models", help="list the registry's models, or add your own",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="the registered models and whether their weights are on disk")
    listing.set_defaults(run=run_list)
    add = actions.add_parser("add", help="download (or point at) a model and register it",
                             description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add.add_argument("source", help="a hub id (org/name) or a local Hugging Face model folder")
    add.add_argument("--name", help="the name batches use as `model` (default: the id's or folder's last part)")
    add.add_argument("--task", choices=["auto", "generate", "embed"], default="auto",
                     help="`embed` answers /v1/embeddings (default: from the config's architectures)")
    add.add_argument("--max-model-len", type=int,
                     help=f"context length (default: the model's, at most {DEFAULT_MAX_MODEL_LEN})")
    add.add_argument("--dtype", default="auto", help="vLLM dtype (auto, bfloat16, float16, float32)")
    add.add_argument("--revision", help="a hub branch, tag or commit (default: main)")
    add.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (read it first)")
    add.set_defaults(run=run_add)


def _registry(layout: DataLayout) -> Registry:
    try:
        return load_registry(layout.registry)
    except RegistryError as exc:
        raise ToolError(str(exc)) from None


def run_list(settings: Settings, args: argparse.Namespace) -> int:
    layout = DataLayout(settings.data_dir)
    registry = _registry(layout)
    print(f"registry: {layout.registry}")
    for name, entry in registry.models.items():
        folder = Path(resolve_path(entry.engine.model, layout.registry.parent))
        where = f"{folder}" if folder.is_dir() else f"{entry.engine.model} (not on disk: `batch-pipeline models add`)"
        adapters = f"  adapters: {', '.join(entry.adapters)}" if entry.adapters else ""
        print(f"  {name:<28} {entry.task:<8} {where}{adapters}")
    return 0


def default_name(source: str) -> str:
    return _UNSAFE.sub("-", Path(source.rstrip("/")).name).strip("-.")[:100] or "model"


def _download(repo_id: str, target: Path, revision: str | None) -> Path:
    """Into a staging folder beside `target` (a rerun resumes it), renamed once complete."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    staging = target.with_name(f".{target.name}.download")
    try:
        snapshot_download(repo_id, revision=revision, local_dir=staging, allow_patterns=_WANTED)
        if not any(staging.glob("*.safetensors")):  # older repositories ship PyTorch .bin weights only
            snapshot_download(repo_id, revision=revision, local_dir=staging, allow_patterns=[*_WANTED, "*.bin"])
    except OfflineModeIsEnabled:
        raise ToolError(f"cannot download {repo_id}: HF_HUB_OFFLINE is set in this shell; unset it "
                        "(`env -u HF_HUB_OFFLINE batch-pipeline models add ...`)") from None
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
        raise ToolError(f"cannot download {repo_id}: {exc}".splitlines()[0]) from None
    shutil.rmtree(staging / ".cache", ignore_errors=True)
    staging.rename(target)
    return target


def check_config(folder: Path, trust_remote_code: bool):
    """The model's config, loaded as vLLM will load it: offline, from the folder."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise ToolError(f"{folder} is not a model vLLM can load: its config does not load ({exc})".splitlines()[0]) from None


def task_of(config, requested: str) -> str:
    if requested != "auto":
        return requested
    architectures = getattr(config, "architectures", None) or []
    return "generate" if any(name.endswith(_GENERATIVE) for name in architectures) else "embed"


def entry_text(name: str, model_path: str, task: str, dtype: str, max_model_len: int | None, source: str,
               indent: str, trust_remote_code: bool) -> str:
    """The registry entry, as YAML text to append under `models:` (block style, the file's indentation)."""
    inner = indent * 2
    lines = [f"{indent}# Added by `batch-pipeline models add {source}` on {date.today().isoformat()}.",
             f"{indent}{name}:"]
    if task == "embed":
        lines.append(f"{indent}  task: embed")
    lines += [f"{indent}  engine:", f"{inner}  model: {_quote(model_path)}", f"{inner}  dtype: {dtype}"]
    if max_model_len:
        lines.append(f"{inner}  max_model_len: {max_model_len}")
    if trust_remote_code:
        lines.append(f"{inner}  trust_remote_code: true")
    return "\n".join(lines) + "\n"


def _quote(value: str) -> str:
    return value if re.fullmatch(r"[A-Za-z0-9_./-]+", value) else '"' + value.replace('"', '\\"') + '"'


def _entry_indent(text: str) -> str:
    """The indentation of the entries under `models:` (two spaces when the file does not show any)."""
    match = re.search(r"^models:[ \t]*(?:#.*)?\n(?:[ \t]*(?:#.*)?\n)*([ \t]+)\S", text, flags=re.MULTILINE)
    return match.group(1) if match else "  "


def append_entry(registry_path: Path, name: str, build) -> Registry:
    """Appends the entry text `build(indent)` returns; the new file must load with the entry in it, or
    nothing is written."""
    text = registry_path.read_text(encoding="utf-8") if registry_path.exists() else "models:\n"
    if not text.endswith("\n"):
        text += "\n"
    new_text = text + build(_entry_indent(text))
    try:
        registry = parse_registry(new_text, str(registry_path))
    except RegistryError as exc:
        raise ToolError(f"the entry would not fit {registry_path} ({exc}); add it by hand") from None
    if name not in registry.models:
        raise ToolError(f"{registry_path} does not end inside its `models:` mapping; add the entry by hand")
    write_text_atomic(registry_path, new_text)
    return registry


def run_add(settings: Settings, args: argparse.Namespace) -> int:
    layout = DataLayout(settings.data_dir)
    name = args.name or default_name(args.source)
    if name in _registry(layout).names():
        raise ToolError(f"{name!r} is already registered in {layout.registry}; choose another --name")
    local = Path(args.source).expanduser()
    if local.is_dir():
        folder = local.resolve()
    elif local.exists() or not _HUB_ID.fullmatch(args.source):
        raise ToolError(f"{args.source} is neither a model folder nor a hub id (org/name)")
    else:
        folder = layout.root / "models" / name
        if folder.exists():
            raise ToolError(f"{folder} already exists; remove it or choose another --name")
        folder.parent.mkdir(parents=True, exist_ok=True)
        print(f"downloading {args.source} into {folder} ...", file=sys.stderr, flush=True)
        _download(args.source, folder, args.revision)
    config = check_config(folder, args.trust_remote_code)
    task = task_of(config, args.task)
    context = getattr(config, "max_position_embeddings", None)
    max_model_len = args.max_model_len or (min(context, DEFAULT_MAX_MODEL_LEN) if context else None)
    registry_dir = layout.registry.parent.resolve()
    model_path = str(folder.relative_to(registry_dir)) if folder.is_relative_to(registry_dir) else str(folder)
    append_entry(layout.registry, name, lambda indent: entry_text(
        name, model_path, task, args.dtype, max_model_len, args.source, indent, args.trust_remote_code))
    print(f"registered {name} ({task}, {folder}) in {layout.registry}")
    print(f"use it: \"model\": \"{name}\" in a batch file, or `batch-pipeline submit FILE --model {name}`")
    return 0
