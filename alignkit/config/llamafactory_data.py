"""LLaMA-Factory's datasets -> alignkit's ``data`` section.

LLaMA-Factory names its datasets in ``dataset_dir/dataset_info.json``; an entry says where the records are and how
to read them. Its rules (data/parser.py and data/README.md in hiyouga/LLaMA-Factory):

- one source per entry: ``hf_hub_url`` (with ``subset``, ``split``, ``folder``), ``ms_hub_url``, ``om_hub_url``,
  ``script_url``, ``cloud_file_name``, or ``file_name`` inside ``dataset_dir``; ``dataset_dir: ONLINE`` makes
  every name a Hugging Face hub id;
- ``formatting``: alpaca (the default), sharegpt or openai; ``ranking: true`` marks preference pairs (the rm and
  dpo stages need them, the others refuse them); KTO data has a ``kto_tag`` column;
- ``columns`` renames the record keys. Without it: instruction, input, output, conversations; WITH it, a column
  it leaves out is unset. ``tags`` does the same for sharegpt messages (default: from, value, human, gpt, system).

Here a single dataset becomes ``data.train`` (the file, or the hub id) and the alignkit record format that reads
its records as they are. When none does (renamed columns, LLaMA-Factory's own pair / KTO / PPO layouts), the
answer is a problem saying what conversion of the records would make them readable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The stage's data, in alignkit's terms: the record format family alignkit reads for it.
KINDS = {"pt": "text", "sft": "sft", "rm": "pairwise", "dpo": "pairwise", "kto": "unpaired", "ppo": "prompt"}
# File types alignkit reads (alignkit.data.loading.READERS; config sits below data, so it is not imported).
READABLE = (".jsonl", ".json", ".parquet", ".csv", ".txt")

_COLUMNS = ("prompt", "query", "response", "history", "messages", "system", "tools", "images", "videos", "audios",
            "chosen", "rejected", "kto_tag")
_DEFAULT_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "messages": "conversations"}
_DEFAULT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                 "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}
# The two message shapes alignkit reads (alignkit.data.formats: ShareGPT's and OpenAI's).
_MESSAGE_STYLES = ({"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"},
                   {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"})

# Alpaca columns -> the keys an alignkit format reads: LLaMA-Factory role -> the names that work (the first is
# the one to rename to; None: the column must be unset).
Layout = dict[str, tuple[str | None, ...]]
_EXTRA: Layout = {"system": ("system", None), "history": (None,), "tools": (None,)}
_ALPACA: dict[str, list[tuple[str, Layout]]] = {
    "sft": [("alpaca", {"prompt": ("instruction",), "query": ("input", None), "response": ("output",), **_EXTRA}),
            ("prompt_response", {"prompt": ("prompt",), "query": (None,), "response": ("response",), **_EXTRA})],
    "text": [("text", {"prompt": ("text",), "query": (None,)})],
    "pairwise": [("pairwise", {"prompt": ("prompt",), "query": (None,), "chosen": ("chosen",),
                               "rejected": ("rejected",), **_EXTRA})],
    "unpaired": [("unpaired", {"prompt": ("prompt",), "query": (None,), "response": ("completion",),
                               "kto_tag": ("label",), **_EXTRA})],
    "prompt": [("prompt", {"prompt": ("prompt",), "query": (None,), **_EXTRA})],
}
_UNSET_WHY = {"query": "fold it into the prompt: LLaMA-Factory joins prompt and query with a newline",
              "history": "earlier turns: write the records as messages instead",
              "tools": "tool schemas: write the records as messages instead"}
# What alignkit's record looks like for LLaMA-Factory's sharegpt data of each kind ({m}: its messages column).
_SHAREGPT_CONVERSIONS = {
    "pairwise": 'alignkit\'s pairwise records are {{"prompt": [turns], "chosen": [turn], "rejected": [turn]}} and '
                'LLaMA-Factory\'s keep chosen / rejected as single messages: convert each record to '
                '{{"prompt": <{m}>, "chosen": [<{c}>], "rejected": [<{r}>]}}',
    "unpaired": 'alignkit\'s KTO records are {{"prompt", "completion", "label"}}: convert each record to '
                '{{"prompt": <{m}>[:-1], "completion": <{m}>[-1:], "label": <{k}>}}',
    "prompt": 'alignkit\'s PPO prompts are {{"prompt": [turns]}} ending with a user turn: convert each record to '
              '{{"prompt": <{m}>[:-1]}} (LLaMA-Factory\'s PPO drops the last turn, the answer, too)',
    "text": "LLaMA-Factory reads pre-training text from alpaca-format datasets only ({{\"text\"}} records)",
}


@dataclass
class DatasetAnswer:
    """What one ``dataset`` (or ``eval_dataset``) value becomes."""

    values: dict[str, Any] = field(default_factory=dict)  # source (the file or hub id), format, split, subset
    problem: str | None = None  # why alignkit cannot read it as it is (the run would not train on what was meant)
    notes: list[str] = field(default_factory=list)  # read approximately
    dropped: list[str] = field(default_factory=list)  # entry settings not carried over


def map_dataset(names: Any, dataset_dir: str, stage: str, yaml_dir: Path) -> DatasetAnswer:
    """The ``data`` values for LLaMA-Factory's ``dataset: names`` (comma-separated) of ``stage``."""
    listed = names if isinstance(names, list) else [n.strip() for n in str(names or "").split(",") if n.strip()]
    if len(listed) != 1:
        what = f"{len(listed)} datasets ({', '.join(map(str, listed))})" if listed else "no dataset"
        return DatasetAnswer(problem=f"{what}: alignkit trains on one file; merge them first (alignkit data mix, "
                                     "or concatenate the files) and set it as the data")
    name = str(listed[0])
    if dataset_dir == "ONLINE":  # LLaMA-Factory reads the name as a hub id, as an alpaca dataset with no columns
        entry, folder = {"hf_hub_url": name}, Path(".")
    else:
        info, folder, problem = _dataset_info(dataset_dir, yaml_dir)
        if problem:
            return DatasetAnswer(problem=problem)
        if name not in info:
            return DatasetAnswer(problem=f'"{name}" is not defined in {folder / "dataset_info.json"}')
        entry = info[name]
    if not isinstance(entry, dict):
        return DatasetAnswer(problem=f'"{name}" in dataset_info.json is not an object')
    answer = _source(name, entry, folder)
    if answer.problem is None:
        _format(name, entry, KINDS[stage], answer)
    return answer


def _dataset_info(dataset_dir: str, yaml_dir: Path) -> tuple[dict, Path, str | None]:
    """dataset_info.json of ``dataset_dir``: relative to the current folder, as LLaMA-Factory reads it, else to
    the YAML file's folder."""
    candidates = [Path(dataset_dir)]
    if not Path(dataset_dir).is_absolute():
        candidates.append(yaml_dir / dataset_dir)
    for folder in candidates:
        path = folder / "dataset_info.json"
        if path.is_file():
            try:
                info = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                return {}, folder, f"{path}: not valid JSON ({exc})"
            if not isinstance(info, dict):
                return {}, folder, f"{path}: expected an object of dataset name -> description"
            return info, folder, None
    return {}, Path(dataset_dir), (f"no {Path(dataset_dir) / 'dataset_info.json'} (LLaMA-Factory looks dataset "
                                   "names up there, from the folder it runs in): run from that folder, or set "
                                   "dataset_dir")


def _source(name: str, entry: dict, folder: Path) -> DatasetAnswer:
    answer = DatasetAnswer()
    if entry.get("num_samples"):
        answer.dropped.append(f'"{name}" has num_samples = {entry["num_samples"]}: alignkit reads every record')
    if "hf_hub_url" in entry:
        answer.values["source"] = str(entry["hf_hub_url"])
        if entry.get("subset"):
            answer.values["subset"] = str(entry["subset"])
        if entry.get("split", "train") != "train":
            answer.values["split"] = str(entry["split"])
        if entry.get("folder"):
            answer.problem = (f'"{name}" reads the folder "{entry["folder"]}" of hub dataset {entry["hf_hub_url"]}: '
                              "alignkit reads whole hub datasets; download that folder's file and use it")
    elif "ms_hub_url" in entry or "om_hub_url" in entry:
        answer.problem = (f'"{name}" is on the ModelScope / Modelers hub: alignkit reads Hugging Face hub datasets '
                          "and local files; download it and use the file")
    elif "script_url" in entry or "cloud_file_name" in entry:
        how = "a loading script" if "script_url" in entry else "a cloud file (s3 / gcs)"
        answer.problem = f'"{name}" is read with {how}: alignkit reads local files and hub datasets'
    elif "file_name" in entry:
        path = folder / str(entry["file_name"])
        if path.is_dir():
            answer.problem = (f'"{name}" is the folder {path}: alignkit reads one file; concatenate its files '
                              "(alignkit data mix) and use that")
        elif path.suffix.lower() not in READABLE:
            answer.problem = f'"{name}" is {path}: alignkit reads {", ".join(READABLE)} files'
        answer.values["source"] = str(path)
    else:
        answer.problem = f'"{name}" in dataset_info.json names no source (file_name, hf_hub_url, ...)'
    return answer


def _columns(entry: dict) -> dict[str, str | None]:
    given = entry.get("columns")
    if not isinstance(given, dict):  # no columns: LLaMA-Factory's defaults
        return {name: _DEFAULT_COLUMNS.get(name) for name in _COLUMNS}
    return {name: given.get(name) for name in _COLUMNS}


def _tags(entry: dict) -> dict[str, str | None]:
    given = entry.get("tags")
    return dict(_DEFAULT_TAGS) if not isinstance(given, dict) else {k: given.get(k) for k in _DEFAULT_TAGS}


def _format(name: str, entry: dict, kind: str, answer: DatasetAnswer) -> None:
    """Set answer.values["format"], or answer.problem saying what alignkit would need."""
    columns = _columns(entry)
    media = [c for c in ("images", "videos", "audios") if columns[c]]
    ranking = bool(entry.get("ranking", False))
    if media:
        answer.problem = f'"{name}" is multimodal ({", ".join(media)} columns): alignkit trains on text only'
    elif ranking != (kind == "pairwise"):
        answer.problem = (f'"{name}" is {"" if ranking else "not "}a preference dataset (ranking: {str(ranking).lower()}), '
                          f"which LLaMA-Factory refuses for this stage too")
    elif kind == "unpaired" and not columns["kto_tag"]:
        answer.problem = f'"{name}" has no kto_tag column: KTO needs each record labelled desirable or not'
    else:
        _read_as(name, entry, columns, kind, answer)
        probe = DatasetAnswer()
        if answer.problem and kind == "prompt" and not _read_as(name, entry, columns, "sft", probe).problem:
            # LLaMA-Factory's PPO takes its prompts from SFT data; alignkit's data tools do the same, once
            answer.problem = (f'"{name}" holds SFT records ({probe.values["format"]}) and alignkit\'s PPO reads prompt '
                              f"records: `alignkit data convert {answer.values['source']} --to prompt -o prompts.jsonl` "
                              "writes them (the turns before the last answer, as LLaMA-Factory's PPO takes them); "
                              "train on that file")


def _read_as(name: str, entry: dict, columns: dict[str, str | None], kind: str, answer: DatasetAnswer) -> DatasetAnswer:
    """The alignkit format reading the records as ``kind`` data (answer.values["format"]), or answer.problem."""
    formatting = entry.get("formatting", "alpaca")
    if formatting == "alpaca":
        _alpaca(name, columns, kind, answer)
    elif formatting in ("sharegpt", "openai"):
        _sharegpt(name, formatting, columns, _tags(entry), kind, answer)
    else:
        answer.problem = f'"{name}" has formatting "{formatting}"; LLaMA-Factory knows alpaca, sharegpt and openai'
    return answer


def _alpaca(name: str, columns: dict[str, str | None], kind: str, answer: DatasetAnswer) -> None:
    layouts = _ALPACA[kind]
    for fmt, layout in layouts:
        if all(columns[role] in allowed for role, allowed in layout.items()):
            answer.values["format"] = fmt
            if fmt == "alpaca" and columns["query"]:
                answer.notes.append(f'"{name}": alignkit joins instruction and input with a blank line, '
                                    "LLaMA-Factory with a newline")
            return
    fmt, layout = layouts[0]
    fixes = [_fix(role, columns[role], allowed) for role, allowed in layout.items() if columns[role] not in allowed]
    keys = ", ".join(allowed[0] for allowed in layout.values() if allowed[0])
    answer.problem = (f'"{name}" (alpaca): alignkit\'s {fmt} format reads the keys {keys}; its records need '
                      f'{"; ".join(fixes)} (e.g. datasets.Dataset.rename_columns; then point the data at the new file)')


def _fix(role: str, column: str | None, allowed: tuple[str | None, ...]) -> str:
    if allowed[0] is None:
        return f'no "{column}" column ({role}: {_UNSET_WHY.get(role, "alignkit does not read it")})'
    if column is None:
        return f'a "{allowed[0]}" column ({role})'
    return f'"{column}" renamed to "{allowed[0]}"'


def _sharegpt(name: str, formatting: str, columns: dict[str, str | None], tags: dict[str, str | None], kind: str,
              answer: DatasetAnswer) -> None:
    readable = tags["system_tag"] in ("system", None) and any(
        all(tags[k] == v for k, v in style.items()) for style in _MESSAGE_STYLES)
    fixes = [] if readable else ["messages as {from, value} with human / gpt / system, or {role, content} with "
                                 "user / assistant / system (its tags)"]
    messages = columns["messages"]
    if kind != "sft":
        answer.problem = f'"{name}" ({formatting}): ' + "; ".join([_SHAREGPT_CONVERSIONS[kind].format(
            m=messages, c=columns["chosen"], r=columns["rejected"], k=columns["kto_tag"]), *fixes])
        return
    if messages not in ("messages", "conversations"):
        fixes.append(f'"{messages}" renamed to "messages"')
    if columns["system"] not in ("system", None):
        fixes.append(f'"{columns["system"]}" renamed to "system"')
    if columns["tools"] and (tags["role_tag"] != "role" or columns["tools"] != "tools"):
        fixes.append("tool calls as OpenAI tool_calls and tool turns with the schemas under \"tools\" (alignkit "
                     "does not read function_call / observation turns)")
    if fixes:
        answer.problem = f'"{name}" ({formatting}): alignkit\'s messages format needs ' + "; ".join(fixes)
        return
    answer.values["format"] = "messages"
