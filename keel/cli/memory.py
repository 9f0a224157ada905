"""``keel memory``: long-term memory by hand (runbooks, notes), per namespace, policy-checked
(``keel.runtime.memory_book``). Memory helps a run reason; it never says what happened."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from keel.cli.common import EXIT_OK, _apply_storage, out
from keel.client import Keel
from keel.config import load_config
from keel.errors import InputError
from keel.identity import acting_principal
from keel.policy.engine import PolicyEngine
from keel.runtime.memory_book import MemoryBook
from keel.storage.memory import MemoryStore


def _book(args: argparse.Namespace) -> tuple[MemoryBook, str]:
    keel = Keel(load_config(args.config))
    _apply_storage(keel, args)
    policy = PolicyEngine(keel.config.policy.model, keel.config.policy.policy)
    principal = acting_principal(keel.config, args.principal)
    return MemoryBook(MemoryStore(keel.store.store), policy), principal


def _text(args: argparse.Namespace) -> str:
    if (args.text is None) == (args.file is None):
        raise InputError("give the item's text with --text or --file, one of them", field="text")
    if args.text is not None:
        return str(args.text)
    try:
        return Path(args.file).read_text()
    except OSError as exc:
        raise InputError(f"cannot read {args.file}: {exc.strerror}", field="--file") from None


def cmd_memory_add(args: argparse.Namespace) -> int:
    book, principal = _book(args)
    item = book.add(
        principal,
        item_id=args.id,
        text=_text(args),
        namespace=args.namespace,
        kind=args.kind,
        title=args.title,
        tags=tuple(args.tag),
    )
    out.print(f"added {item.kind} {escape(item.id)} to {escape(item.namespace)}")
    return EXIT_OK


def cmd_memory_list(args: argparse.Namespace) -> int:
    book, principal = _book(args)
    items = book.listing(principal, args.namespace, args.kind)
    if args.json:
        print(json.dumps([i.model_dump(mode="json") for i in items], indent=2))
        return EXIT_OK
    table = Table("id", "kind", "title", "tags", "from run", title=f"memory: {args.namespace}")
    for i in items:
        table.add_row(
            escape(i.id), i.kind, escape(i.title), escape(", ".join(i.tags)), i.source_run or ""
        )
    out.print(table)
    return EXIT_OK


def cmd_memory_search(args: argparse.Namespace) -> int:
    book, principal = _book(args)
    found = book.search(principal, args.query, args.namespace or ["shared"], args.k)
    if args.json:
        rows = [{**i.model_dump(mode="json"), "score": s} for i, s in found]
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    for item, score in found:
        out.print(
            f"{score:6.2f}  [bold]{escape(item.id)}[/bold] ({item.namespace}/{item.kind}) "
            f"{escape(item.title)}"
        )
    if not found:
        out.print("nothing matches")
    return EXIT_OK


def cmd_memory_forget(args: argparse.Namespace) -> int:
    book, principal = _book(args)
    book.forget(principal, args.id, args.namespace, args.kind)
    out.print(f"forgot {args.kind} {escape(args.id)} in {escape(args.namespace)}")
    return EXIT_OK


def add_memory_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    mem = sub.add_parser("memory", help="long-term memory: add, list, search, forget")
    verbs = mem.add_subparsers(dest="verb", required=True, parser_class=type(mem))

    def verb(name: str, text: str) -> argparse.ArgumentParser:
        v: argparse.ArgumentParser = verbs.add_parser(name, help=text)
        v.add_argument("--as", dest="principal", default=None, help="act as (policy: act_as)")
        return v

    add = verb("add", "add or replace an item")
    add.add_argument("id", help="the item's id (letters, digits, . _ -)")
    add.add_argument("--text", help="the item's text")
    add.add_argument("--file", help="read the item's text from this file")
    add.add_argument("--title", default="")
    add.add_argument("--tag", action="append", default=[])
    add.add_argument("--kind", default="document", help="document (default) or episode")
    add.add_argument("--namespace", default="shared", help="shared (default) or a tenant's")
    add.set_defaults(fn=cmd_memory_add)

    ls = verb("list", "list a namespace's items")
    ls.add_argument("--namespace", default="shared")
    ls.add_argument("--kind", default=None, help="document or episode (default: both)")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(fn=cmd_memory_list)

    search = verb("search", "the items that best match a query")
    search.add_argument("query")
    search.add_argument("-k", type=int, default=5, help="at most this many (1-50)")
    search.add_argument(
        "--namespace", action="append", default=[], help="where to look (repeat; default shared)"
    )
    search.add_argument("--json", action="store_true")
    search.set_defaults(fn=cmd_memory_search)

    forget = verb("forget", "remove an item")
    forget.add_argument("id")
    forget.add_argument("--namespace", default="shared")
    forget.add_argument("--kind", default="document")
    forget.set_defaults(fn=cmd_memory_forget)
