"""What every dataset builder shares: shards, progress, errors, command line.

The COCO, Cityscapes, ADE20K and synthetic builders each turn their source
into serialised examples (`tfrecord.encode_example`) and hand them here.
`write_split` writes one split as DeepLab2-named shards
(`{split}-0000i-of-0000K.tfrecord`) behind a progress bar; `refuse_existing`
stops a build from replacing earlier outputs unless asked; `run_cli` runs a
builder as a program, where the errors of a build, each naming the file at
fault, become usage errors.
"""

import os
from typing import Callable
from typing import Iterable
from typing import List
from typing import Sequence

from absl import app
from absl import flags
import tqdm

from deeplab2_kmax.data import tfrecord

# The flags defined here belong to the builder that runs, and its --help.
flags.disclaim_key_flags()

def refuse_existing(found: Sequence[str], overwrite: bool) -> None:
  """Raises FileExistsError naming the first of `found`, unless `overwrite`."""
  if not found or overwrite:
    return
  if len(found) == 1:
    raise FileExistsError(f"{found[0]} already exists; pass --overwrite "
                          "to replace it.")
  raise FileExistsError(
      f"{found[0]} already exists (and {len(found) - 1} more outputs); "
      "pass --overwrite to replace them.")


def write_split(records: Iterable[bytes], num_records: int, output_dir: str,
                split: str, num_shards: int, progress: bool) -> List[str]:
  """Writes the records of `split`; returns the shard paths.

  At most `num_shards` shards (no more than records), filled in order;
  shards of `split` left by an earlier build with another shard count are
  removed once the new ones are complete.
  """
  paths = tfrecord.shard_paths(output_dir, split,
                               max(1, min(num_shards, num_records)))
  existing = tfrecord.existing_shards(output_dir, split)
  os.makedirs(output_dir, exist_ok=True)
  tfrecord.write_sharded(
      tqdm.tqdm(records, total=num_records, desc=split, disable=not progress),
      paths, num_records)
  for stale in set(existing) - set(paths):
    os.remove(stale)
  return list(paths)


def define_output_flags(num_shards: int) -> None:
  """--output_dir (required), --num_shards and --overwrite.

  Defined only when a builder runs as a program: absl's flags are global and
  the builders share these names.
  """
  flags.DEFINE_string("output_dir", None, "Output folder.")
  flags.DEFINE_integer("num_shards", num_shards, "Shards per split.")
  flags.DEFINE_boolean("overwrite", False, "Replace existing outputs.")
  flags.mark_flag_as_required("output_dir")


def run_cli(build_from_flags: Callable[[], object]) -> None:
  """Runs `build_from_flags()` as the program; input errors become usage
  errors (their messages name the file or flag at fault)."""

  def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
      build_from_flags()
    except (FileNotFoundError, FileExistsError, ValueError) as e:
      raise app.UsageError(str(e)) from e

  app.run(main)
