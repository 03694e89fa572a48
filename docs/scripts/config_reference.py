"""The configuration reference, docs/configuration.md, generated from skintumor/conf/.

Every option's meaning has one home: the YAML comment beside it (or in the comment lines just above
it) in ``skintumor/conf/**.yaml``; a file's leading comment describes the option it is
(``data=folder``). This script reads every file there and writes the page: the groups, their
options, and every key with its default and meaning. A key without a comment of its own takes the
meaning of the same key in the file it builds on (``data/busi.yaml`` from ``data/_shared.yaml``) or,
for the keys an experiment sets, from the file that defines it (``model.loss.gamma`` from
``model/attention_resnet18.yaml``).

    python docs/scripts/config_reference.py            # rewrite docs/configuration.md
    python docs/scripts/config_reference.py --check    # exit 1 if it is stale or an option has no meaning

It is also a MkDocs hook (``hooks:`` in mkdocs.yml): the build warns, so ``make docs`` (strict) fails,
when the page is stale or an option lacks a meaning. tests/test_docs.py checks both as well.
Only PyYAML and the standard library are used.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "skintumor" / "conf"
PAGE = REPO / "docs" / "configuration.md"
REGENERATE = "python docs/scripts/config_reference.py"

PRIMARY = ("train", "search")  # the primary configs: python -m skintumor.train / skintumor.search
# a sentence per group, for navigation; the options' meanings live in the YAML files
GROUP_INTRO = {
    "data": "Where the images come from: the built-in phantom or your own scans ([your own data](data.md)).",
    "augment": "Training-time augmentation ([augmentation](augmentation.md)).",
    "model": "The network, its loss, optimiser, schedule, test-time flip and decision rule.",
    "trainer": (
        "Lightning `Trainer` arguments: device, precision, epochs. Any other `Trainer` argument can be"
        " added with `+trainer.NAME=VALUE`."
    ),
    "logger": "Where metrics go: a CSV file always, Weights & Biases too ([W&B](wandb.md)).",
    "callbacks": "Checkpoints, progress bar, learning-rate monitor, early stopping.",
    "paths": "Where runs write.",
    "experiment": (
        "Whole recipes that set keys of several groups at once ([the study's protocol](paper.md),"
        " [the recipe](recipe.md)). Keys given on the command line still win."
    ),
    "debug": "Quick wiring checks.",
    "hydra": ("Run and sweep directories, and what happens after a sweep ([cross-validation](cross-validation.md))."),
    "hydra/launcher": (
        "How the jobs of a multirun (`-m`, e.g. the folds of a cross-validation) are launched: one after"
        " another (Hydra's `basic`, the default), in parallel on one machine, or on a SLURM cluster"
        " ([scaling out](scaling.md))."
    ),
}
GROUP_ORDER = tuple(GROUP_INTRO)
EXTERNAL_DEFAULTS = {"hydra/launcher": "basic"}  # groups whose default option is Hydra's own, not a file here

log = logging.getLogger("mkdocs.hooks.config_reference")


class ConfSyntaxError(ValueError):
    """A conf file uses YAML this small reader does not follow (flow mappings over several lines, ...)."""


@dataclass
class Entry:
    """One key of one file: a leaf (a value) or a mapping (keys below it)."""

    path: tuple[str, ...]  # keys inside the file
    raw: str  # the value as written ('' for a mapping)
    comment: str  # its own comment: the lines just above it, then the one beside it (and its continuation)
    mapping: bool
    target: str | None  # a mapping's _target_
    line: int


@dataclass
class ConfFile:
    rel: str  # data/busi.yaml
    group: str  # data, hydra/launcher; '' for train.yaml and search.yaml
    name: str  # busi
    package: str  # data, hydra.launcher, _global_, '' (primary)
    description: list[str]  # the leading comment, one string per line (leading '#' and one space removed)
    defaults: list = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)

    @property
    def choice(self) -> str:
        return f"{self.group}={self.name}" if self.group else f"{self.name}.yaml"

    def full(self, path: tuple[str, ...]) -> str:
        prefix = "" if self.package in ("", "_global_") else self.package + "."
        return prefix + ".".join(path)


# ---------------------------------------------------------------------------------------------- reading


def _split_comment(text: str) -> tuple[str, str | None, int]:
    """``value  # comment`` -> (value, comment or None, offset of '#'), quotes respected."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].rstrip(), text[i + 1 :].strip(), i
    return text.rstrip(), None, -1


KEY = re.compile(r"^(?P<indent> *)(?P<key>[^\s#\-'\"][^:#]*?|'[^']*'|\"[^\"]*\"):(?:(?P<rest>\s.*))?$")


def read_conf_file(path: Path, conf: Path = CONF) -> ConfFile:
    """Keys, raw values and comments of one conf file, checked against what PyYAML reads."""
    rel = path.relative_to(conf).as_posix()
    group = "" if "/" not in rel else rel.rsplit("/", 1)[0]
    text = path.read_text()
    data = yaml.safe_load(text) or {}
    package = group.replace("/", ".")
    description: list[str] = []
    entries: list[Entry] = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the open mappings
    pending: list[str] = []  # comment lines since the last blank line or key
    previous: tuple[Entry, int] | None = None  # the key on the line before, with its comment's column
    in_defaults = False
    seen_key = False
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped:
            pending, previous = [], None
            continue
        if stripped.startswith("#"):
            comment = stripped[1:]
            if comment.strip().startswith("@package"):
                package = comment.strip().split(None, 1)[1].strip()
                continue
            column = len(line) - len(line.lstrip())
            if previous is not None and previous[1] == column:  # a comment continued on the next line
                previous[0].comment += " " + comment.strip()
                continue
            previous = None
            if not seen_key:
                description.append(comment[1:] if comment.startswith(" ") else comment)
            else:  # a comment inside the defaults list is dropped by the next list item
                pending.append(comment.strip())
            continue
        if stripped.startswith("- "):
            if not in_defaults:
                raise ConfSyntaxError(f"{rel}:{number}: a block list outside `defaults:`; write it as [a, b]")
            pending, previous = [], None
            continue
        match = KEY.match(line)
        if not match:
            raise ConfSyntaxError(f"{rel}:{number}: cannot read this line: {line!r}")
        indent, key = len(match["indent"]), match["key"].strip("'\"")
        rest = match["rest"] or ""
        value, comment, offset = _split_comment(rest.strip())
        column = match.start("rest") + len(rest) - len(rest.lstrip()) + offset if comment is not None else -1
        seen_key = True
        if indent == 0:
            in_defaults = key == "defaults"
        if in_defaults:
            pending, previous = [], None
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        keys = tuple(k for _, k in stack) + (key,)
        node = data
        for k in keys:
            if not isinstance(node, dict) or k not in node:
                raise ConfSyntaxError(f"{rel}:{number}: {'.'.join(keys)} is not where YAML reads it")
            node = node[k]
        mapping = isinstance(node, dict) and bool(node)
        if mapping and value:
            raise ConfSyntaxError(f"{rel}:{number}: write the mapping {key} as a block, one key a line")
        entry = Entry(
            path=keys,
            raw=value,
            comment=_join(pending, comment),
            mapping=mapping,
            target=node.get("_target_") if mapping else None,
            line=number,
        )
        entries.append(entry)
        if mapping:
            stack.append((indent, key))
        pending = []
        previous = (entry, column) if comment else None
    read = {e.path for e in entries}
    missing = sorted(".".join(p) for p in _paths(data) if p not in read and p[0] != "defaults")
    if missing:
        raise ConfSyntaxError(f"{rel}: keys YAML reads but this reader missed: {missing}")
    return ConfFile(
        rel=rel,
        group=group,
        name=path.stem,
        package=package,
        description=_trim(description),
        defaults=list(data.get("defaults") or []),
        entries=entries,
    )


def _join(above: list[str], beside: str | None) -> str:
    """The comment lines above a key, then the one beside it (after a colon when the first reads as a heading)."""
    text = " ".join(above)
    if beside and text:
        return text + (" " if text[-1] in ".:;!?" else ": ") + beside
    return text or beside or ""


def _paths(node, prefix=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield prefix + (str(k),)
            yield from _paths(v, prefix + (str(k),))


def _trim(lines: list[str]) -> list[str]:
    while lines and not lines[-1].strip():
        lines.pop()
    while lines and not lines[0].strip():
        lines.pop(0)
    return lines


def read_conf(conf: Path = CONF) -> list[ConfFile]:
    return [read_conf_file(p, conf) for p in sorted(conf.rglob("*.yaml"))]


# ------------------------------------------------------------------------------------------- meanings


@dataclass
class Row:
    key: str  # full dotted path
    default: str  # as written in the file (or the mapping's _target_)
    meaning: str


class Reference:
    """Every file, every key's meaning, and what lacks one."""

    def __init__(self, conf: Path = CONF):
        self.conf = conf
        self.files = read_conf(conf)
        self.by_rel = {f.rel: f for f in self.files}
        primary = self.by_rel.get("train.yaml")
        self.group_defaults: dict[str, str | None] = dict(EXTERNAL_DEFAULTS)
        for item in primary.defaults if primary else []:
            if isinstance(item, dict):
                for group, choice in item.items():
                    self.group_defaults[group] = choice
        # full key -> (meaning, file) from the base files, where a key's general meaning is written:
        # train.yaml and search.yaml, a group's _shared.yaml or default.yaml, else its default option.
        # Other options' comments say what that option does with the key, so they feed no one else.
        self.index: dict[str, tuple[str, str]] = {}
        for f in sorted(self.files, key=self._priority):
            if self._priority(f)[0] < 3:
                for e in f.entries:
                    if e.comment:
                        self.index.setdefault(f.full(e.path), (e.comment, f.rel))
        self.missing: list[str] = []
        self.rows = {f.rel: self._rows(f) for f in self.files}
        unknown = sorted({f.group for f in self.files if f.group} - set(GROUP_ORDER))
        if unknown:
            self.missing.append(f"config groups without a sentence in GROUP_INTRO (docs/scripts): {unknown}")

    def _priority(self, f: ConfFile) -> tuple[int, str]:
        """0 primary, 1 a group's shared keys, 2 its default option where it has no shared file, 3 others."""
        if not f.group:
            return (0, f.rel)
        if f.name.startswith("_") or f.name == "default":
            return (1, f.rel)
        siblings = {g.name for g in self.files if g.group == f.group}
        shared = any(n.startswith("_") or n == "default" for n in siblings)
        if not shared and f.name == self.group_defaults.get(f.group):
            return (2, f.rel)
        return (3, f.rel)

    def bases(self, f: ConfFile) -> list[ConfFile]:
        """The files of its own group that ``f`` builds on (its defaults list), nearest first."""
        out = []
        for item in f.defaults:
            if isinstance(item, str) and item != "_self_":
                base = self.by_rel.get(f"{f.group}/{item}.yaml" if f.group else f"{item}.yaml")
                if base:
                    out += [base, *self.bases(base)]
        return out

    def meaning(self, f: ConfFile, e: Entry) -> str:
        """Its own comment, else the same key's in a file it builds on, else in the base file defining it."""
        if e.comment:
            return e.comment
        for base in self.bases(f):
            for b in base.entries:
                if b.path == e.path and b.comment:
                    return b.comment
        return self.index.get(f.full(e.path), ("", ""))[0]

    def _rows(self, f: ConfFile) -> list[Row]:
        if not f.description:
            self.missing.append(f"{f.rel}: no leading comment saying what {f.choice} is")
        rows = []
        for e in f.entries:
            if e.path[-1] == "_target_":
                if len(e.path) > 1:
                    continue  # shown on its mapping's row
                rows.append(Row(f.full(e.path), e.raw, "what Hydra builds from these keys"))
                continue
            if e.mapping and e.target is None:
                if e.comment:  # a commented section: its row, then its keys
                    rows.append(Row(f.full(e.path), "", e.comment))
                continue
            meaning = self.meaning(f, e)
            if not meaning:
                self.missing.append(f"{f.rel}:{e.line}: {f.full(e.path)} has no comment saying what it means")
            rows.append(Row(f.full(e.path), e.target or e.raw, meaning))
        return rows

    def groups(self) -> dict[str, list[ConfFile]]:
        out: dict[str, list[ConfFile]] = {}
        for f in self.files:
            if f.group:
                out.setdefault(f.group, []).append(f)
        order = {g: i for i, g in enumerate(GROUP_ORDER)}
        return dict(sorted(out.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


# ------------------------------------------------------------------------------------------- markdown


def _escape(text: str, table: bool = True) -> str:
    """Markdown-safe text; `code spans` are kept as written."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # outside code spans
        p = parts[i].replace("\\", "\\\\").replace("<", "&lt;").replace("*", "\\*")
        p = re.sub(r"(?<![\w\\])_|_(?!\w)", r"\\_", p)  # _emphasis_ markers, not snake_case
        parts[i] = p.replace("|", "\\|") if table else p
    if len(parts) % 2 == 0:  # an unmatched backtick: keep it literal
        parts[-2] += "\\`" + parts.pop()
    return "`".join(parts)


def _code(value: str) -> str:
    return f"`{value}`" if value else ""


def _description(f: ConfFile) -> list[str]:
    """The file's leading comment: prose as a paragraph, indented lines (commands) as a code block."""
    out: list[str] = []
    prose: list[str] = []
    code: list[str] = []

    def flush():
        if prose:
            out.extend([_escape(" ".join(prose), table=False), ""])
            prose.clear()
        if code:
            width = min(len(c) - len(c.lstrip()) for c in code)
            out.extend(["```bash", *(c[width:] for c in code), "```", ""])
            code.clear()

    for line in f.description:
        if line.startswith("  "):
            if prose:
                flush()
            code.append(line)
        else:
            if code:
                flush()
            prose.append(line.strip())
    flush()
    return out


def _builds_on(f: ConfFile, conf: Path) -> str:
    parts = []
    for item in f.defaults:
        if item == "_self_":
            continue
        if isinstance(item, str):
            own = f"{f.group}/{item}.yaml" if f.group else f"{item}.yaml"
            if own in ("data/_shared.yaml",):
                parts.append("the keys every source shares (above)")
            elif f.group and (conf / own).exists():
                parts.append(f"`{f.group}={item}`")
            else:
                parts.append(f"Hydra's own `{item}`")
        elif isinstance(item, dict):
            for k, v in item.items():
                parts.append(f"`{k.replace('override ', '').lstrip('/')}={v}`")
    return ("Builds on " + ", ".join(parts) + ".") if parts else ""


def _table(rows: list[Row]) -> list[str]:
    if not rows:
        return ["*(no keys of its own)*", ""]
    out = ["| key | default | meaning |", "|---|---|---|"]
    for r in rows:
        out.append(f"| `{r.key}` | {_code(r.default)} | {_escape(r.meaning)} |")
    return [*out, ""]


def render(ref: Reference) -> str:
    groups = ref.groups()
    train = ref.by_rel["train.yaml"]
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated from skintumor/conf/ by docs/scripts/config_reference.py: edit the comments in the",
        f"     YAML files, then run `{REGENERATE}`. Do not edit this page by hand. -->",
        "",
        "Every option of `python -m skintumor.train` and `python -m skintumor.search`, with its default and",
        "meaning, read from the comments in `skintumor/conf/` (where each meaning is written once). Choose",
        "an option of a group with `group=option`, set any key with `key=value`, add a key that is not",
        "there with `+key=value`:",
        "",
        "```bash",
        "python -m skintumor.train data=folder data.root=/data/scans model=resnet18 trainer.max_epochs=5",
        "python -m skintumor.train experiment=recipe data.image_size=224 seed=1",
        "python -m skintumor.train -m data.fold=0,1,2,3,4 hydra/launcher=parallel   # a multirun: every fold",
        "python -m skintumor.train experiment=recipe --cfg job    # print the composed configuration, run nothing",
        "```",
        "",
        "A value that cannot work stops the run with one line naming it (exit code 2). `???` marks a key",
        "you must set; `${...}` takes another key's value. The `make` targets pass overrides through",
        '`ARGS` (`make cv ARGS="experiment=recipe"`).',
        "",
        "## Groups",
        "",
        "| group | default | options |",
        "|---|---|---|",
    ]
    for group, files in groups.items():
        default = ref.group_defaults.get(group)
        options = [f"`{f.name}`" for f in files if not f.name.startswith("_")]
        if group in EXTERNAL_DEFAULTS:
            options.insert(0, f"`{EXTERNAL_DEFAULTS[group]}` (Hydra's)")
        anchor = group.replace("/", "")
        shown = "null" if default is None else default
        lines.append(f"| [`{group}`](#{anchor}) | `{shown}` | {', '.join(options)} |")
    lines += ["", "## Top-level keys", "", *_description(train), *_table(ref.rows[train.rel])]
    for group, files in groups.items():
        lines += [f"## `{group}`", "", GROUP_INTRO.get(group, ""), ""]
        default = ref.group_defaults.get(group)
        ordered = sorted(files, key=lambda f: (not f.name.startswith("_"), f.name != default, f.name))
        for f in ordered:
            if f.name.startswith("_"):
                title = f"Keys every option shares (`{f.rel}`)"
            else:
                title = f"`{f.choice}`" + (" (default)" if f.name == default else "")
            lines += [f"### {title}", "", *_description(f)]
            builds = _builds_on(f, ref.conf)
            if builds:
                lines += [builds, ""]
            lines += _table(ref.rows[f.rel])
    search = ref.by_rel.get("search.yaml")
    if search:
        lines += [
            "## Policy search (`search.yaml`)",
            "",
            *_description(search),
            "It composes the same `data`, `model`, `paths`, `hydra`, `experiment` and `debug` groups as",
            "training, so the same overrides pick the data and the child network.",
            "",
            *_table(ref.rows[search.rel]),
        ]
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------------------------------------- checking


def problems(conf: Path = CONF, page: Path = PAGE) -> list[str]:
    """What is wrong: options without a meaning, and a page that does not match the conf files."""
    ref = Reference(conf)
    text = render(ref)
    found = list(ref.missing)
    if not page.exists() or page.read_text() != text:
        found.append(
            f"{page.relative_to(REPO) if page.is_relative_to(REPO) else page} is out of date: run `{REGENERATE}`"
        )
    return found


def on_pre_build(config, **kwargs):  # MkDocs hook
    for problem in problems():
        log.warning("config reference: %s", problem)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if stale or undocumented")
    args = parser.parse_args(argv)
    ref = Reference()
    for problem in ref.missing:
        print(f"undocumented: {problem}", file=sys.stderr)
    text = render(ref)
    if args.check:
        stale = not PAGE.exists() or PAGE.read_text() != text
        if stale:
            print(f"{PAGE.relative_to(REPO)} is out of date: run `{REGENERATE}`", file=sys.stderr)
        return 1 if stale or ref.missing else 0
    PAGE.write_text(text)
    print(f"wrote {PAGE.relative_to(REPO)} ({len(text):,} characters)")
    return 1 if ref.missing else 0


if __name__ == "__main__":
    sys.exit(main())
