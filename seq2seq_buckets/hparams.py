"""Model and optimisation hyperparameters: strict, checked in one place, saved with the model."""

import dataclasses
import json
import os

from seq2seq_buckets.errors import UserError

HPARAMS_FILE = "hparams.json"


@dataclasses.dataclass
class HParams:
  """Everything needed to rebuild the model; decode and resume read it from train_dir."""
  cell: str = "lstm"                  # lstm | gru
  num_layers: int = 2
  size: int = 256                     # hidden units of every layer
  embedding_size: int = 256
  bidirectional_encoder: bool = True  # first encoder layer: size/2 units each direction
  attention: str = "bahdanau"         # bahdanau (additive) | luong (general)
  input_feeding: bool = True
  dropout: float = 0.2
  reverse_source: bool = False
  num_samples: int = 0                # > 0: sampled softmax with this many samples in training
  tie_embeddings: bool = False        # target embedding doubles as output projection
  label_smoothing: float = 0.0
  optimizer: str = "adam"             # adam | sgd
  learning_rate: float = 0.001
  learning_rate_decay_factor: float = 0.5   # on a dev-loss plateau; 1.0 = never decay
  max_gradient_norm: float = 5.0
  batch_size: int = 64
  seed: int = 1234
  src_vocab_size: int = 0             # from the prepared data
  tgt_vocab_size: int = 0
  buckets: list = dataclasses.field(default_factory=list)  # [[I, O], ...] from the manifest

  def check(self):
    """Cross-field checks; raises UserError naming the offending setting."""
    def need(ok, message):
      if not ok:
        raise UserError(message)
    need(self.cell in ("lstm", "gru"), f"cell must be lstm or gru, not {self.cell!r}")
    need(self.attention in ("bahdanau", "luong"),
         f"attention must be bahdanau or luong, not {self.attention!r}")
    need(self.optimizer in ("adam", "sgd"), f"optimizer must be adam or sgd, not {self.optimizer!r}")
    need(self.num_layers >= 1, "num_layers must be >= 1")
    need(self.size >= 2 and self.embedding_size >= 1, "size and embedding_size must be positive")
    need(not self.bidirectional_encoder or self.size % 2 == 0,
         "a bidirectional encoder needs an even size (size/2 units each direction)")
    need(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")
    need(0.0 <= self.label_smoothing < 1.0, "label_smoothing must be in [0, 1)")
    need(not self.tie_embeddings or self.embedding_size == self.size,
         "tie_embeddings needs embedding_size == size")
    need(self.num_samples == 0 or 0 < self.num_samples < self.tgt_vocab_size,
         "num_samples must be 0 (full softmax) or below the target vocabulary size")
    need(self.num_samples == 0 or self.label_smoothing == 0.0,
         "label_smoothing needs the full softmax (num_samples=0)")
    need(self.learning_rate > 0, "learning_rate must be positive")
    need(0 < self.learning_rate_decay_factor <= 1.0, "learning_rate_decay_factor must be in (0, 1]")
    need(self.max_gradient_norm > 0, "max_gradient_norm must be positive")
    need(self.batch_size >= 1, "batch_size must be >= 1")
    return self

  def to_json(self):
    return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

  @classmethod
  def from_dict(cls, values, source="hparams"):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise UserError(f"{source}: unknown hyperparameters {unknown}")
    return cls(**values)


def save(train_dir, hparams):
  path = os.path.join(train_dir, HPARAMS_FILE)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(hparams.to_json() + "\n")
  os.replace(path + ".tmp", path)


def load(train_dir):
  """The hyperparameters saved in train_dir, or None when it has none yet."""
  path = os.path.join(train_dir, HPARAMS_FILE)
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      values = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"{path}: unreadable ({e})") from None
  return HParams.from_dict(values, path).check()
