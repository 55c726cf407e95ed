"""ml_collections configs for `python -m experiments.train --config=experiments/configs/<name>.py`.

Each file's `get_config()` returns a ConfigDict with the groups data, model, training, optimizer,
eval and sampling; its docstring gives the command, the hardware it was made for and the result.
"""
