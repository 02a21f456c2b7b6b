"""`slotspe-pipe <stage>`: one subcommand per pipeline stage.

Stage modules are imported only when their subcommand runs, so `slotspe-pipe preflight` does not
pay for importing torch. Each stage module exposes ``configure_parser(parser)`` (adds its
arguments) and ``run_cli(args) -> int`` (the exit code); the CLI is a thin layer over them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from slotspe_pipe import __version__

# subcommand -> (module, one-line help). The order is the order of the pipeline.
COMMANDS: dict[str, tuple[str, str]] = {
    "preflight": (
        "slotspe_pipe.preflight",
        "triage one slide: open it, resolve µm/px, probe reads",
    ),
    "slide-status": ("slotspe_pipe.slide_status", "gather preflight records into one status table"),
    "segment": ("slotspe_pipe.tissue", "tissue segmentation -> GeoJSON, mask, QC thumbnail"),
    "tile": ("slotspe_pipe.tiling", "patch grid at an exact physical resolution -> tiles store"),
    "extract": ("slotspe_pipe.extract", "foundation-model features for one slide -> feature store"),
    "export": ("slotspe_pipe.export", "feature store -> .pt (SlotSPE/CLAM) or .h5"),
    "encoders": ("slotspe_pipe.encoders", "list the encoder registry"),
    "cohort": ("slotspe_pipe.cohort", "join clinical labels, folds, omics and slides"),
    "cv": ("slotspe_pipe.train", "cross-validated training and evaluation of a survival model"),
    "report": ("slotspe_pipe.report", "HTML report of a run"),
    "demo": ("slotspe_pipe.demo", "write synthetic slides or a synthetic demo cohort"),
    "sheet": ("slotspe_pipe.sheet", "validate a slide sample sheet"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slotspe-pipe",
        description="Raw slides + RNA-seq -> SlotSPE survival model. One subcommand per stage.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="STAGE")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = build_parser()
    # Find the subcommand without importing every stage module.
    command = next((a for a in argv if not a.startswith("-")), None)
    if command is None or command not in COMMANDS:
        args = top.parse_args(argv)
        top.print_help()
        return 2 if command is not None else 0
    idx = argv.index(command)
    verbose = any(a in ("-v", "--verbose") for a in argv[:idx])
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    module_name, help_text = COMMANDS[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"slotspe-pipe {command}", description=help_text)
    module.configure_parser(parser)
    args = parser.parse_args(argv[idx + 1 :])
    return int(module.run_cli(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
