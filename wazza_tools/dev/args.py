"""Options shared by the commands that start a local broker (`broker`, `dev`)."""

from __future__ import annotations

import argparse


def add_engine_argument(parser: argparse.ArgumentParser) -> None:
    """The `--engine` option of the commands that start a local broker."""
    parser.add_argument(
        "--engine",
        choices=("kafka", "tansu"),
        default=None,
        help="kafka: Apache Kafka, its log on disk (default where Java 17+ and Maven are "
        "found); tansu: memory only, no idempotent producers (the fallback without Java)",
    )
