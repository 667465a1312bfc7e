"""The one-screen tables eval prints."""

from __future__ import annotations


def print_table(title: str, summary: dict, skip: tuple[str, ...] = ()) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    for key, value in summary.items():
        if key not in skip:
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console().print(table)
