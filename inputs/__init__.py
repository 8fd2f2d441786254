"""The boundary for input: every file or value a user hands the stack is read here, and refused in one line
(`InputError`) unless it is what the stack expects. A bottom room: it imports nothing from the project.

    files.py        a regular file (never a FIFO or device: checked before opening), bounded size, strict UTF-8
    yaml.py         configs, sweep and stage files, a run's config.yaml, command-line values (strict SafeLoader)
    json.py         JSON metadata, JSONL pairs and corpora (finite numbers, valid strings, bounded nesting)
    schema.py       a loaded value's structure (a checkpoint: a mapping with typed fields)
    environment.py  the environment's refusals (permission, read-only, disk full, name too long) as one line
    tree.py         checks over a parsed value (nesting, text, finite numbers), errors.py: InputError and clip

The names below are the package's summary; code in the project imports the submodules (`from inputs.yaml import
read_yaml`), which also resolve where a folder named `inputs` shadows this package (tests/inputs under an
editable install).
"""

from inputs.environment import refusal
from inputs.errors import InputError, clip
from inputs.files import CONFIG_BYTES, JSON_BYTES, check_text, read_bytes, read_text, regular_file
from inputs.json import json_lines, parse_json, read_json
from inputs.schema import require_field, require_mapping
from inputs.yaml import parse_value, parse_yaml, read_yaml

__all__ = ["CONFIG_BYTES", "JSON_BYTES", "InputError", "check_text", "clip", "json_lines", "parse_json",
           "parse_value", "parse_yaml", "read_bytes", "read_json", "read_text", "read_yaml", "refusal",
           "regular_file", "require_field", "require_mapping"]
