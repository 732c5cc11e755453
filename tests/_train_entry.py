"""``python tests/_train_entry.py train|eval ...``: the engine's commands without depending on visionzoo/cli.py.

Runs as a script (also under torchrun) and reports whether anything imported wandb.
"""
import argparse
import sys

from visionzoo.engine.evaluate import add_eval_parser, run_eval
from visionzoo.engine.train import add_train_parser, run_train

parser = argparse.ArgumentParser()
commands = parser.add_subparsers(dest="command", required=True)
add_train_parser(commands).set_defaults(func=run_train)
add_eval_parser(commands).set_defaults(func=run_eval)
args = parser.parse_args()
code = args.func(args)
print("wandb imported:", "wandb" in sys.modules, flush=True)
sys.exit(code)
